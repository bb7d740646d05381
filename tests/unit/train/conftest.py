"""Fixtures for training tests: a tiny dataset, a plan builder (tiny model, fp32) and a LoRA model builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tiny import write_chat_data
from tunecraft.config import build_config


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat_data(tmp_path_factory.mktemp("data") / "train.jsonl", 64)


@pytest.fixture
def make_cfg(tiny_model_dir: Path, chat_data: Path, tmp_path: Path) -> Any:
    def make(**values: Any):
        base = {
            "model.name": str(tiny_model_dir),
            "data.train": str(chat_data),
            "train.out": str(tmp_path / "run"),
            "train.precision": "fp32",
            "train.lr": 1e-3,
            "train.epochs": 1,
            "train.batch_size": 8,
            "train.micro_batch_size": 8,
            "train.method": "full",
        }
        base.update(values)
        return build_config(values=base)

    return make


@pytest.fixture
def make_lora_model(make_cfg: Any) -> Any:
    """(plan, runtime, model) of a rank-4 LoRA run, its B matrices non-zero so the adapters add
    something (they start at zero); `values` override the config."""
    from tunecraft.train.loop import build, build_model

    def make(**values: Any) -> tuple[Any, Any, Any]:
        plan, rt = build(make_cfg(**{"train.method": "lora", "lora.r": 4, "lora.alpha": 8, **values}))
        model, _ = build_model(plan, rt)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        return plan, rt, model

    return make
