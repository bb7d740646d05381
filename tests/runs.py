"""Build run directories the way `tunecraft train` writes them, without training (for tests).

A LoRA run gets an adapter whose B matrices are randomly perturbed (peft initializes B to zero,
which would make the adapter a no-op and every parity test vacuous). A full run gets a copy of
the base with perturbed weights. Both follow the run-directory contract in DESIGN.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def _write_run_files(run_dir: Path, base_dir: Path, method: str, system_prompt: str | None) -> None:
    from tunecraft.config import build_config, dump_config

    cfg = build_config(
        values={
            "model.name": str(base_dir),
            "train.method": method,
            "data.template": "auto",
            "data.system_prompt": system_prompt,
            "train.out": str(run_dir),
        }
    )
    dump_config(cfg, run_dir / "config.yaml")
    summary = {
        "status": "completed",
        "method": method,
        "base_model": str(base_dir),
        "base_model_path": str(base_dir),
        "train_examples": 0,
        "train_tokens": 0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def build_lora_run(
    run_dir: Path,
    base_dir: Path,
    seed: int = 0,
    r: int = 4,
    scale: float = 0.3,
    system_prompt: str | None = None,
) -> Path:
    """A LoRA run over `base_dir` with a non-trivial random adapter in `run_dir/model`."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunecraft.models.load import load_model, load_tokenizer

    run_dir.mkdir(parents=True, exist_ok=True)
    base = load_model(base_dir)
    tokenizer = load_tokenizer(base_dir)
    model = get_peft_model(base, LoraConfig(target_modules="all-linear", r=r, lora_alpha=2 * r))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(str(run_dir / "model"))
    tokenizer.save_pretrained(str(run_dir / "model"))
    _write_run_files(run_dir, base_dir, "lora", system_prompt)
    return run_dir


def build_full_run(run_dir: Path, base_dir: Path, seed: int = 0, scale: float = 0.02) -> Path:
    """A full fine-tuning run: the base with every weight nudged, saved as an HF model dir."""
    import torch

    from tunecraft.models.load import load_model, load_tokenizer

    run_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(base_dir)
    tokenizer = load_tokenizer(base_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    model.save_pretrained(str(run_dir / "model"), safe_serialization=True)
    tokenizer.save_pretrained(str(run_dir / "model"))
    if (base_dir / "generation_config.json").is_file():
        shutil.copy(base_dir / "generation_config.json", run_dir / "model" / "generation_config.json")
    _write_run_files(run_dir, base_dir, "full", None)
    return run_dir


def train_config(cfg, resume: bool = False, console=None):
    """Plan and train a config in this process (what `tunecraft train` does, minus printing)."""
    from tunecraft.train.loop import build, train

    plan, rt = build(cfg)
    return train(plan, rt, resume=resume, console=console)
