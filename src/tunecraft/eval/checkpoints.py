"""Turn a training checkpoint into a loadable run directory, so eval can score any step.

A checkpoint's `trainable.safetensors` holds the training-time model's trainable parameters:
for LoRA the peft names (`...q_proj.lora_A.default.weight`), for full fine-tuning every
parameter of the HF model. The deliverable `model/` has the same tensors under their saved
names (peft drops the adapter name), so a checkpoint becomes a `model/` by renaming, checked
key for key against the deliverable: a silent mismatch would evaluate the wrong weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tunecraft.errors import TunecraftError
from tunecraft.rundir import CHECKPOINTS, RunInfo

ADAPTER_NAME = "default"  # the adapter name peft gives at training time (get_peft_model)


class CheckpointError(TunecraftError):
    """A checkpoint that is missing or does not match the run's model."""


def find_checkpoint(run_dir: Path, name: str) -> Path:
    """`step-000040`, `40` or a path -> the checkpoint directory (must hold trainable weights)."""
    candidate = Path(name)
    if not candidate.is_dir():
        step = name.removeprefix("step-")
        candidate = run_dir / CHECKPOINTS / (f"step-{int(step):06d}" if step.isdigit() else name)
    if not (candidate / "trainable.safetensors").is_file():
        root = run_dir / CHECKPOINTS
        have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise CheckpointError(
            f"{candidate}: no checkpoint with trainable.safetensors; available: {', '.join(have) or 'none'}"
        )
    return candidate


def _saved_keys(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def _adapter_key(name: str) -> str:
    return name.replace(f".{ADAPTER_NAME}.", ".")


def materialize(info: RunInfo, checkpoint: Path, out: Path) -> Path:
    """Write a run directory at `out` whose model/ holds the checkpoint's weights."""
    model_out = out / "model"
    shutil.rmtree(out, ignore_errors=True)
    weights = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}[info.method]
    reference = info.model_dir / weights
    if not reference.is_file():
        raise CheckpointError(f"{reference}: not found (sharded or missing model weights cannot be matched)")
    shutil.copytree(info.model_dir, model_out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = load_file(str(checkpoint / "trainable.safetensors"))
    if info.method == "lora":
        tensors = {_adapter_key(k): v for k, v in tensors.items()}
    expected = _saved_keys(reference)
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(
            f"{checkpoint}: its parameters do not match {reference.name} "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    save_file(tensors, str(model_out / weights), metadata={"format": "pt"})
    for name in ("config.yaml", "summary.json"):
        if (info.run_dir / name).is_file():
            shutil.copy(info.run_dir / name, out / name)
    return out
