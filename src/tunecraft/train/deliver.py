"""Write the run's deliverable, `model/`, atomically: a PEFT adapter or a full HF model dir.

Both carry the tokenizer files and the chat template used in training, so that chat, serve
and export render prompts exactly as training did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunecraft.durable import atomic_dir
from tunecraft.models.facts import unwrap


def save_deliverable(
    model: Any, tokenizer: Any, out: Path, method: str, state_dict: dict[str, Any] | None = None
) -> None:
    """`state_dict`, when given, is saved instead of the model's own (sharded training gathers it)."""
    extra = {} if state_dict is None else {"state_dict": state_dict}
    with atomic_dir(out) as tmp:
        # LoRA: the PeftModel saves the adapter only; full: the transformers model under it.
        owner = model if method == "lora" else unwrap(model)
        owner.save_pretrained(str(tmp), safe_serialization=True, **extra)
        tokenizer.save_pretrained(str(tmp))
