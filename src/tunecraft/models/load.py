"""Load tokenizers, models and LoRA adapters from local directories: safetensors only, no remote code.

Two rules hold for every load, whichever stage asks:

- Weights are safetensors. Full models get `use_safetensors=True`; adapters are checked here
  first, because peft falls back to `adapter_model.bin` (pickle, which can run code) on its own.
- A model's own Python code (`auto_map` in config.json / tokenizer_config.json) runs only when
  the caller passes `trust_remote_code=True`, which only an explicit flag of the command being
  run may set. Without it, a directory whose code would be needed is refused with a message
  naming the flag; one that names code but also has a native transformers class loads natively
  (no code runs), as transformers itself does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunecraft.errors import TunecraftError, UnsafeModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


# ----------------------------------------------------------------------------- remote code


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is absent or unreadable (transformers reports those)."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _auto_map(config: dict[str, Any]) -> dict[str, Any]:
    value = config.get("auto_map")
    return value if isinstance(value, dict) else {}


def _model_needs_code(config: dict[str, Any]) -> bool:
    """config.json names its own classes and transformers has none for its model_type."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return bool(_auto_map(config)) and config.get("model_type") not in CONFIG_MAPPING


def _tokenizer_needs_code(tok_config: dict[str, Any]) -> bool:
    """tokenizer_config.json names its own tokenizer class and transformers has no such class."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if "AutoTokenizer" not in _auto_map(tok_config):
        return False
    name = tok_config.get("tokenizer_class")
    return not isinstance(name, str) or tokenizer_class_from_name(name) is None


def remote_code_needed(path: Path | str) -> str | None:
    """Which file of `path` needs the directory's own Python code to load, or None."""
    directory = Path(path)
    if _model_needs_code(_read_json(directory / "config.json")):
        return "config.json"
    if _tokenizer_needs_code(_read_json(directory / "tokenizer_config.json")):
        return "tokenizer_config.json"
    return None


def check_remote_code(path: Path | str, trust_remote_code: bool) -> None:
    """Refuse a directory whose own code would have to run, unless the caller trusts it."""
    if trust_remote_code:
        return
    needing = remote_code_needed(path)
    if needing is None:
        return
    code = _auto_map(_read_json(Path(path) / needing))
    raise UnsafeModelError(
        f"{path}: this model needs its own Python code to load ({needing} auto_map: "
        f"{', '.join(sorted({str(v) for v in code.values()}))}), and tunecraft runs a model's code "
        "only when you ask for it. Read that code first; if you trust it, pass --trust-remote-code "
        "to this command (serve, chat, export; for training: model.trust_remote_code=true). "
        "A run directory's own config never switches it on."
    )


# ----------------------------------------------------------------------------- tokenizer, model


def load_tokenizer(path: Path | str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    check_remote_code(path, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise TunecraftError(
            f"{path}: tokenizer has no fast (Rust) implementation; tunecraft needs one for exact "
            "loss masks. Save it with tokenizers>=0.14 (tokenizer.json)."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    path: Path | str,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: torch.device | str = "cpu",
    quantization: Any | None = None,
) -> Any:
    """A causal LM from safetensors (pickle weights are refused by `use_safetensors=True`).

    `quantization` (a transformers quantization config, e.g. QLoRA's 4-bit one) quantizes the
    weights as they load, straight onto `device`: a quantized model is placed by its loader
    (moving it afterwards would have to carry the quantization state along).
    """
    from transformers import AutoModelForCausalLM

    check_remote_code(path, trust_remote_code)
    placed = {} if quantization is None else {"quantization_config": quantization, "device_map": {"": str(device)}}
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        attn_implementation="sdpa",
        **placed,
    )
    return model if quantization is not None else model.to(device)


# ----------------------------------------------------------------------------- LoRA adapters


def check_adapter_dir(path: Path | str) -> None:
    """A PEFT adapter directory must hold adapter_config.json and safetensors weights (never pickle)."""
    directory = Path(path)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise UnsafeModelError(f"{directory}: not a PEFT adapter (no {ADAPTER_CONFIG})")
    if (directory / ADAPTER_WEIGHTS).is_file():
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    found = f"only pickle weights ({', '.join(pickled)}) found" if pickled else f"no {ADAPTER_WEIGHTS} found"
    raise UnsafeModelError(
        f"{directory}: {found}. tunecraft loads adapters from safetensors only (pickle can run "
        "arbitrary code). Convert it in a trusted environment: "
        "PeftModel.from_pretrained(base, dir).save_pretrained(dir, safe_serialization=True), "
        f"which writes {ADAPTER_WEIGHTS}."
    )


def load_peft(base: Any, adapter_dir: Path | str, adapter_name: str = "default") -> Any:
    """`base` wrapped in a PeftModel with the adapter at `adapter_dir` (safetensors checked first)."""
    from peft import PeftModel

    check_adapter_dir(adapter_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name)


def add_adapter(peft_model: Any, adapter_dir: Path | str, adapter_name: str) -> None:
    """Load one more adapter into a PeftModel (safetensors checked first)."""
    check_adapter_dir(adapter_dir)
    peft_model.load_adapter(str(adapter_dir), adapter_name=adapter_name)
