"""Facts about a model that every stage asks: size, context, decoder layers, device.

Each is computed in one place: from the model directory's config (no weights read), or from a
loaded model. Training plans with them, serving bounds requests with them, the distributed
engine shards along the decoder layers found here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

DEFAULT_CONTEXT = 2048  # when neither the tokenizer nor the model config states a context
UNSET_LENGTH = 1_000_000  # tokenizers report ~1e30 when they set no limit


def meta_model(model_dir: Path, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model built from config.json on the meta device: its shapes, no weights read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def count_params(model_dir: Path, trust_remote_code: bool = False) -> int:
    """Parameter count from config.json alone (no weights read)."""
    return sum(p.numel() for p in meta_model(model_dir, trust_remote_code).parameters())


def _config_positions(model_dir: Path | None) -> int | None:
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def context_length(tokenizer: Any, model_dir: Path | None = None) -> int:
    """The model's context in tokens: the tokenizer's limit capped at the model's positions."""
    limits = [_config_positions(model_dir)]
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < UNSET_LENGTH:
        limits.append(tok_limit)
    known = [x for x in limits if x is not None]
    return min(known) if known else DEFAULT_CONTEXT


def unwrap(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a decoder: the longest ModuleList in the model."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of a loaded model, 4-bit weights counted as the weights
    they stand for."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(_weights_in(p) for p in model.parameters())
    return trainable, total


def _weights_in(p: torch.Tensor) -> int:
    """How many weights a parameter holds: a QLoRA (bitsandbytes 4-bit) weight packs two per
    byte into a (n/2, 1) tensor and keeps its real shape in its quantization state."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else p.numel()


def pick_device() -> torch.device:
    """This process's accelerator (under torchrun, the GPU of its LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU keeps log-probs exact; bf16 on GPU is what the hardware is fast at."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32
