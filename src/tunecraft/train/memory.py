"""Peak-memory estimate of a training run, and what the device has: the plan decides gradient
checkpointing from these, and `train --dry-run` shows them beside the measured peak.

The estimate is the usual accounting (weights, gradients, AdamW's two fp32 moments, the
activations one micro-batch keeps for its backward pass). Activations per token and decoder
layer are taken as (12 * hidden + 4 * intermediate) values: the inputs every linear layer,
norm and the attention keep for backward, plus, on CPU, the attention probabilities that short
blocks keep (`attention.kept_score_bytes`). With gradient checkpointing a layer keeps only its
input (hidden values per token) and one layer at a time is recomputed in full.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tunecraft.models.facts import meta_model

HEADROOM = 0.85  # of the device's memory a run may plan to use (the allocator, the OS, eval batches)
# QLoRA's NF4 with double quantization, bytes per weight: the 4-bit code, an 8-bit scale per
# 64 weights, an fp32 scale per 256 of those (bitsandbytes' blocks).
FOUR_BIT_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int
    checkpointing: bool  # whether `activations` assumes gradient checkpointing

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_gib(getattr(self, name))}" for name in ("weights", "gradients", "optimizer", "activations"))
        return f"~{_gib(self.total)} ({parts})"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def shape(model_dir: Path) -> dict[str, int]:
    """hidden size, intermediate size, decoder layers and vocabulary from config.json (no weights)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)  # multimodal wrappers (Gemma 3) keep it nested
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 512)
    return {"hidden": hidden, "intermediate": int(config.get("intermediate_size") or 4 * hidden),
            "layers": int(config.get("num_hidden_layers") or config.get("n_layer") or 1),
            "heads": int(config.get("num_attention_heads") or config.get("n_head") or 1),
            "vocab": int(config.get("vocab_size") or 32000)}


def estimate(n_params: int, trainable: int, method: str, compute_bytes: int, micro_tokens: int,
             dims: dict[str, int], checkpointing: bool, full_logits: bool = False,
             four_bit: int = 0, score_bytes: int = 0) -> MemoryEstimate:
    """Peak bytes of one training step. `compute_bytes`: 2 for bf16, 4 for fp32; LoRA keeps the
    frozen base in the compute dtype, full fine-tuning fp32 master weights; `micro_tokens`:
    tokens of one forward pass; `full_logits`: the reference engine's logits over every token;
    `four_bit`: base weights stored in 4 bits (QLoRA; see `linear_weights`); `score_bytes`:
    what attention keeps per token and layer beyond that (`attention.kept_score_bytes`)."""
    if method == "lora":
        base = (n_params - four_bit) * compute_bytes + int(four_bit * FOUR_BIT_BYTES)
        weights = base + trainable * 4
    else:
        weights = n_params * 4
    per_layer = (12 * dims["hidden"] + 4 * dims["intermediate"]) * compute_bytes + score_bytes
    if checkpointing:
        kept = micro_tokens * (dims["hidden"] * compute_bytes * dims["layers"] + per_layer)
    else:
        kept = micro_tokens * per_layer * dims["layers"]
    if full_logits:
        kept += micro_tokens * dims["vocab"] * 4 * 2  # fp32 logits and their gradient
    return MemoryEstimate(weights, trainable * 4, trainable * 8, kept, checkpointing)


def device_bytes(device: torch.device) -> int:
    """Memory the device has: the GPU's total, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def measured_peak(device: torch.device) -> int:
    """The peak measured so far: CUDA's allocator peak, or this process's peak resident size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def linear_weights(model_dir: Path, trust_remote_code: bool = False) -> int:
    """Weights of the linear layers that QLoRA stores in 4 bits: every one but the LM head
    (transformers keeps that, and the embedding it may share, in the compute dtype)."""
    model = meta_model(model_dir, trust_remote_code)
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] != "lm_head")


def trainable_params(model_dir: Path, method: str, lora: Any, n_params: int, trust_remote_code: bool = False) -> int:
    """Parameters that train: all of them, or LoRA's r * (in + out) per adapted linear layer,
    counted on a meta-device copy of the model (no weights read)."""
    if method != "lora":
        return n_params
    model = meta_model(model_dir, trust_remote_code)
    targets = lora.target_modules
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] == "lm_head":
            continue
        if targets == "all-linear" or name.split(".")[-1] in targets:
            total += lora.r * (module.in_features + module.out_features)
    return total
