"""Fixtures for training tests: a tiny dataset and a plan builder (tiny model, fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
