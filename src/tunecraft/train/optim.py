"""AdamW and the learning-rate schedule (linear warmup, then cosine/linear decay or constant)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, fused: bool
) -> torch.optim.AdamW:
    """AdamW over trainable parameters; norms and biases (1-D) get no weight decay."""
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, object] = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8}
    if fused:
        kwargs["fused"] = True  # one kernel for the whole update (CPU and CUDA)
    else:
        kwargs["foreach"] = False  # the plain per-parameter loop: deterministic reference
    return torch.optim.AdamW([g for g in groups if g["params"]], **kwargs)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    return decay_factor((step - warmup) / max(1, total - warmup), schedule)


def decay_factor(progress: float, schedule: str) -> float:
    """The schedule's multiplier after warmup, at `progress` (0: the peak, 1: the end of the decay)."""
    progress = min(1.0, max(0.0, progress))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def decay_progress(step: int, total: int, warmup: int) -> float:
    """How far into its decay `step` is (0 during warmup), the inverse of `lr_factor`'s mapping."""
    if step < warmup or total <= warmup:
        return 0.0
    return min(1.0, (step - warmup) / max(1, total - warmup))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
