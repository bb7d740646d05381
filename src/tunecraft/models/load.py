"""Load tokenizers and models from a resolved directory: safetensors only, no remote code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunecraft.errors import TunecraftError


def load_tokenizer(path: Path | str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with a pad token (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

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
) -> Any:
    """A causal LM from safetensors (pickle weights are refused by `use_safetensors=True`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        attn_implementation="sdpa",
    )
    return model.to(device)
