"""`tunecraft export`: write a run's model as a PEFT adapter, a merged HF model, a GGUF file, or
its LoRA adapter as a GGUF adapter for llama.cpp's `--lora`.

Every format is written into a temporary directory next to `--out`, verified against the run
(`tunecraft.export.verify`), and only then renamed into place, so `--out` never holds a
half-written or unverified artifact.

A model's own Python code runs only when the caller passes `trust_remote_code=True` (the
command's `--trust-remote-code` flag); the run directory's config never switches it on, and
adapters load from safetensors only (`tunecraft.models.load`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunecraft.durable import atomic_dir
from tunecraft.errors import TunecraftError
from tunecraft.export.gguf_arch import GgufExportError
from tunecraft.export.gguf_lora import LORA_TYPES, check_lora_gguf, write_lora_gguf
from tunecraft.export.gguf_verify import load_gguf_model
from tunecraft.export.gguf_writer import GgufType, write_gguf
from tunecraft.export.verify import (
    TOLERANCES,
    ExportVerificationError,
    check_end_of_turn,
    check_rendering,
    compare_logits,
    generation_config_eos,
)
from tunecraft.serve.engine import LoadedModel, load_target
from tunecraft.rundir import RunInfo, read_run, resolve_base

Format = Literal["adapter", "merged", "gguf", "gguf-lora"]
FORMATS: tuple[str, ...] = ("adapter", "merged", "gguf", "gguf-lora")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
GGUF_FILE = "model.gguf"
GGUF_LORA_FILE = "adapter.gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class ExportError(TunecraftError):
    """An export that cannot be done as asked."""


@dataclass
class ExportResult:
    path: Path
    format: str
    checks: list[str] = field(default_factory=list)


Status = Callable[[str], None]


def _validate(fmt: str, dtype: str | None, gguf_type: str) -> None:
    problems = []
    if fmt not in FORMATS:
        problems.append(f"--format {fmt!r}: use {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    if dtype is not None and dtype not in DTYPES:
        problems.append(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    if gguf_type not in GGUF_TYPES:
        problems.append(f"--gguf-type {gguf_type!r}: use {', '.join(GGUF_TYPES)}")
    elif fmt == "gguf-lora" and gguf_type not in LORA_TYPES:
        problems.append(f"--gguf-type {gguf_type!r} with gguf-lora: use {', '.join(LORA_TYPES)} (4-bit A/B factors "
                        "lose most of an adapter; llama.cpp's own converter does not offer them)")
    if problems:
        raise ExportError("; ".join(problems))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out}: directory is not empty (pass --overwrite to replace it)")


# ----------------------------------------------------------------------------- writers


def _generation_config(ref: LoadedModel, info: RunInfo) -> Any:
    """The base's generation config with EOS = every end-of-turn id (first: the chat's end token)."""
    from transformers import GenerationConfig

    source = info.model_dir if info.method == "full" else resolve_base(info)
    gen = GenerationConfig.from_pretrained(str(source)) if (source / "generation_config.json").is_file() else GenerationConfig()
    ids = list(ref.eos_token_ids)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    gen.pad_token_id = ref.pad_token_id
    if ref.tokenizer.bos_token_id is not None:
        gen.bos_token_id = ref.tokenizer.bos_token_id
    return gen


def _copy_safe_files(src: Path, dst: Path) -> None:
    """Copy a model/adapter dir, refusing pickle files (they never leave tunecraft)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.suffix in PICKLE_SUFFIXES:
            raise ExportError(f"{item}: pickle weights are never exported; the run must hold safetensors")
        if item.is_file():
            shutil.copy2(item, dst / item.name)


def _short_target_modules(config_path: Path) -> None:
    """peft records 'all-linear' as full module paths; vLLM and most tools expect the short names
    (q_proj, ...). Same modules for Llama-style models (verification reloads it to make sure)."""
    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    targets = cfg.get("target_modules")
    if isinstance(targets, list) and targets and all("." in t for t in targets):
        cfg["target_modules"] = sorted({t.rsplit(".", 1)[-1] for t in targets})
        config_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def write_adapter(info: RunInfo, ref: LoadedModel, tmp: Path) -> None:
    if info.method != "lora":
        raise ExportError(f"{info.run_dir}: a full fine-tuning run has no adapter; use --format merged")
    _copy_safe_files(info.model_dir, tmp)
    _short_target_modules(tmp / "adapter_config.json")
    _generation_config(ref, info).save_pretrained(str(tmp))


def _float_model(info: RunInfo, dtype: torch.dtype, trust_remote_code: bool) -> Any:
    """The run's model as one plain HF model: LoRA merged into float (never quantized) weights."""
    from tunecraft.models.load import load_model, load_peft

    if info.method == "full":
        return load_model(info.model_dir, dtype=torch.float32, trust_remote_code=trust_remote_code).to(dtype)
    base = load_model(resolve_base(info), dtype=torch.float32, trust_remote_code=trust_remote_code)
    if getattr(base.config, "quantization_config", None):
        raise ExportError("the base model is quantized; merging into quantized weights loses the adapter's precision")
    # Merge in fp32, then cast once: merging in half precision would round twice.
    merged = load_peft(base, info.model_dir).merge_and_unload()
    return merged.to(dtype)


def write_merged(info: RunInfo, ref: LoadedModel, tmp: Path, dtype_name: str, trust_remote_code: bool = False) -> None:
    model = _float_model(info, DTYPES[dtype_name], trust_remote_code)
    model.generation_config = _generation_config(ref, info)
    model.save_pretrained(str(tmp), safe_serialization=True)
    ref.tokenizer.save_pretrained(str(tmp))


def write_gguf_file(info: RunInfo, ref: LoadedModel, tmp: Path, gguf_type: GgufType, trust_remote_code: bool = False) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    model = _float_model(info, torch.float32, trust_remote_code)
    write_gguf(model, ref.tokenizer, tmp / GGUF_FILE, gguf_type, info.run_dir.name, ref.eos_token_ids[0])


def write_gguf_lora_file(info: RunInfo, tmp: Path, gguf_type: GgufType, trust_remote_code: bool = False) -> None:
    """The run's LoRA adapter as llama.cpp's GGUF adapter (applied over a GGUF of the same base)."""
    from tunecraft.models.load import load_model, load_peft

    if info.method != "lora":
        raise ExportError(f"{info.run_dir}: a full fine-tuning run has no adapter; use --format gguf")
    tmp.mkdir(parents=True, exist_ok=True)
    base = load_model(resolve_base(info), dtype=torch.float32, trust_remote_code=trust_remote_code)
    write_lora_gguf(load_peft(base, info.model_dir), tmp / GGUF_LORA_FILE, gguf_type, info.run_dir.name)


# ----------------------------------------------------------------------------- verification


def verify_export(
    run_dir: Path | str,
    artifact: Path | str,
    fmt: str,
    tolerance_key: str | None = None,
    trust_remote_code: bool = False,
) -> list[str]:
    """Check an exported directory against its run; returns what was checked, raises on a mismatch."""
    info = read_run(run_dir)
    ref = load_target(str(info.run_dir), device="cpu", dtype=torch.float32, trust_remote_code=trust_remote_code)
    return _verify(info, ref, Path(artifact), fmt, tolerance_key, trust_remote_code)


def _verify(
    info: RunInfo, ref: LoadedModel, artifact: Path, fmt: str, tolerance_key: str | None, trust_remote_code: bool = False
) -> list[str]:
    from tunecraft.models.load import load_model, load_peft, load_tokenizer

    where = f"export check ({fmt})"
    if fmt == "gguf":
        return _verify_gguf(ref, artifact, tolerance_key or "gguf-f16", where)
    if fmt == "gguf-lora":
        return _verify_gguf_lora(info, artifact, tolerance_key or "gguf-lora-f16", where, trust_remote_code)
    tokenizer = load_tokenizer(artifact, trust_remote_code=trust_remote_code)
    samples = check_rendering(ref, tokenizer, where)
    check_end_of_turn(ref, generation_config_eos(artifact), where)
    if fmt == "adapter":
        base = load_model(resolve_base(info), trust_remote_code=trust_remote_code)
        model = load_peft(base, artifact).eval()
        key = "adapter"
    else:
        model = load_model(artifact, dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
        key = tolerance_key or "float32"
    worst = compare_logits(ref, lambda x: model(input_ids=x).logits, samples, TOLERANCES[key], where)
    return _checks(len(samples), ref, worst, key)


def _verify_gguf(ref: LoadedModel, artifact: Path, key: str, where: str) -> list[str]:
    import gguf
    from transformers import AutoTokenizer

    path = artifact / GGUF_FILE
    reader = gguf.GGUFReader(str(path))
    eos_field = reader.fields.get("tokenizer.ggml.eos_token_id")
    check_end_of_turn(ref, [int(eos_field.contents())] if eos_field else [], where)
    tokenizer = AutoTokenizer.from_pretrained(str(artifact), gguf_file=GGUF_FILE)
    samples = check_rendering(ref, tokenizer, where)
    # transformers' GGUF loader, plus what llama.cpp reads from the file that the loader does not
    model, applied = load_gguf_model(artifact, GGUF_FILE)
    worst = compare_logits(ref, lambda x: model(input_ids=x).logits, samples, TOLERANCES[key], where)
    checks = _checks(len(samples), ref, worst, key)
    if applied:
        checks[-1] += " (reloaded by transformers' GGUF loader with llama.cpp's reading of: " + "; ".join(applied) + ")"
    return checks


def _verify_gguf_lora(info: RunInfo, artifact: Path, key: str, where: str, trust_remote_code: bool) -> list[str]:
    """transformers cannot load a GGUF adapter: read it back with gguf-py and rebuild each merged
    weight as llama.cpp will, against the run's merged model (PEFT's merge of the adapter)."""
    from tunecraft.models.load import load_model

    base = load_model(resolve_base(info), dtype=torch.float32, trust_remote_code=trust_remote_code)
    merged = _float_model(info, torch.float32, trust_remote_code)
    try:
        got = check_lora_gguf(artifact / GGUF_LORA_FILE, base, merged)
    except GgufExportError as exc:
        raise ExportVerificationError(f"{where}: {exc}") from None
    tol = TOLERANCES[key]
    if not got.worst <= tol.limit(got.scale):  # also catches NaN
        raise ExportVerificationError(
            f"{where}: base + alpha/r x B A differs from the merged weights by up to {got.worst:.3g} "
            f"(allowed {tol.limit(got.scale):.3g} = {tol.atol:g} + {tol.rtol:g} x max |merged - base| {got.scale:.3g})"
        )
    return [
        f"llama.cpp LoRA adapter for {got.arch}: general.type adapter, adapter.type lora, alpha {got.alpha:g}",
        f"{got.pairs} lora_a/lora_b pairs under the base GGUF's tensor names; every weight the adapter changes has one",
        f"base + alpha/r x lora_b @ lora_a rebuilds the run's merged weights in the base GGUF's layout"
        f"{' (Q/K rows permuted for llama.cpp RoPE)' if got.arch == 'llama' else ''}: max |diff| {got.worst:.2e} "
        f"(tolerance {tol.atol:g} + {tol.rtol:g} x max |merged - base| {got.scale:.3g})",
    ]


def _checks(n: int, ref: LoadedModel, worst: float, key: str) -> list[str]:
    eot = ref.tokenizer.convert_ids_to_tokens(ref.eos_token_ids[0])
    tol = TOLERANCES[key]
    return [
        f"tokenizer + chat template render {n} sample prompts/conversations exactly as training did",
        f"generation stops at the end-of-turn token {eot!r}",
        f"logits match the run's model: max |diff| {worst:.2e} (tolerance {tol.atol:g} + {tol.rtol:g} x max |logit|)",
    ]


# ----------------------------------------------------------------------------- entry point


def export_run(
    run_dir: Path | str,
    fmt: str,
    out: Path | str,
    dtype: str | None = None,
    gguf_type: str = "f16",
    overwrite: bool = False,
    on_status: Status | None = None,
    trust_remote_code: bool = False,
) -> ExportResult:
    """Export, verify, then move into `out`. Raises a TunecraftError (and leaves `out` alone) on failure.

    `trust_remote_code` is the caller's explicit choice (the `--trust-remote-code` flag) and the
    only thing that lets a model's own code run; the run directory's config never does.
    """
    _validate(fmt, dtype, gguf_type)
    out = Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    status = on_status or (lambda _msg: None)
    info = read_run(run_dir)
    ref = load_target(str(info.run_dir), device="cpu", dtype=torch.float32, trust_remote_code=trust_remote_code)
    # Written and verified in a temp dir beside `out`, which it replaces only if every check passed.
    with atomic_dir(out) as tmp:
        status(f"writing {fmt} export of {info.run_dir.name}")
        key = _write(fmt, info, ref, tmp, dtype or "float32", gguf_type, trust_remote_code)
        status("verifying the export against the run")
        checks = _verify(info, ref, tmp, fmt, key, trust_remote_code)
    return ExportResult(out, f"{fmt} ({gguf_type})" if fmt.startswith("gguf") else fmt, checks)


def _write(
    fmt: str, info: RunInfo, ref: LoadedModel, tmp: Path, dtype: str, gguf_type: str, trust_remote_code: bool
) -> str | None:
    """Write the artifact into `tmp`; returns the tolerance key its verification uses."""
    if fmt == "adapter":
        write_adapter(info, ref, tmp)
        return "adapter"
    if fmt == "merged":
        write_merged(info, ref, tmp, dtype, trust_remote_code)
        return dtype
    if fmt == "gguf-lora":
        write_gguf_lora_file(info, tmp, gguf_type, trust_remote_code)  # type: ignore[arg-type]
        return f"gguf-lora-{gguf_type}"
    write_gguf_file(info, ref, tmp, gguf_type, trust_remote_code)  # type: ignore[arg-type]
    return f"gguf-{gguf_type}"


