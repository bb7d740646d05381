"""Write the run's deliverable, `model/`, atomically: a PEFT adapter or a full HF model dir.

Both carry the tokenizer files and the chat template used in training, so that chat, serve
and export render prompts exactly as training did. `model/` is replaced whole
(`durable.atomic_dir`): a reader, or a crash, never sees a half-written one; a full disk
raises `durable.DiskFullError` and leaves the previous `model/` in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tunecraft.durable import atomic_dir
from tunecraft.models.facts import unwrap

_TOKENIZER_ALLOWANCE = 16 * 2**20  # bytes for tokenizer files, template and configs


def save_deliverable(
    model: Any, tokenizer: Any, out: Path, method: str, state_dict: dict[str, Any] | None = None
) -> None:
    """`state_dict`, when given, is saved instead of the model's own (sharded training gathers it)."""
    extra = {} if state_dict is None else {"state_dict": state_dict}
    with atomic_dir(out, size_hint=_size_hint(model, method, state_dict)) as tmp:
        # LoRA: the PeftModel saves the adapter only; full: the transformers model under it.
        owner = model if method == "lora" else unwrap(model)
        owner.save_pretrained(str(tmp), safe_serialization=True, **extra)
        tokenizer.save_pretrained(str(tmp))


def snapshot_deliverable(model: Any, method: str, copy: bool = True) -> dict[str, torch.Tensor]:
    """A CPU copy of what `save_deliverable` writes, taken now and written later (training
    goes on changing the live weights in place): LoRA, the adapter tensors (peft keeps only
    those of a state dict); full, the model's whole state dict, tied tensors still shared so
    that save_pretrained writes them once. `copy=False` when the weights no longer change (the
    run's last step): on CPU the live tensors, no copy made."""
    if method == "lora":
        return {n: p.detach().to("cpu", copy=copy) for n, p in model.named_parameters() if p.requires_grad}
    copies: dict[tuple[int, torch.dtype, tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for name, tensor in unwrap(model).state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if key not in copies:
            copies[key] = tensor.detach().to("cpu", copy=copy)
        out[name] = copies[key]
    return out


def _size_hint(model: Any, method: str, state_dict: dict[str, Any] | None) -> int:
    """About how many bytes `model/` takes (for the message when the disk is full)."""
    if state_dict is not None:
        tensors = list(state_dict.values())
    elif method == "lora":
        tensors = [p for p in model.parameters() if p.requires_grad]
    else:
        tensors = list(unwrap(model).parameters())  # tied weights are listed once
    return sum(t.numel() * t.element_size() for t in tensors) + _TOKENIZER_ALLOWANCE
