"""Write the run's deliverable, `model/`, atomically: a PEFT adapter or a full HF model dir.

Both carry the tokenizer files and the chat template used in training, so that chat, serve
and export render prompts exactly as training did.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tunecraft.train.loss import unwrap


def save_deliverable(
    model: Any, tokenizer: Any, out: Path, method: str, state_dict: dict[str, Any] | None = None
) -> None:
    """`state_dict`, when given, is saved instead of the model's own (sharded training gathers it)."""
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {} if state_dict is None else {"state_dict": state_dict}
    if method == "lora":
        model.save_pretrained(str(tmp), safe_serialization=True, **extra)  # adapter only
    else:
        inner = unwrap(model)
        inner.save_pretrained(str(tmp), safe_serialization=True, **extra)
    tokenizer.save_pretrained(str(tmp))
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
