"""The example configs in examples/configs/ load as they are and name models tunecraft knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunecraft.config import load_config
from tunecraft.models.registry import find_known

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "examples" / "configs").glob("*.yaml"))


def test_there_is_one_per_model_family() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"demo", "full", "qwen2.5-0.5b", "llama-3.2-1b", "gemma-3-1b", "mistral-7b"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_an_example_config_loads_and_names_a_known_model(path: Path) -> None:
    cfg = load_config(path)
    assert find_known(cfg.model.name) is not None, cfg.model.name
    assert Path(cfg.data.sources()[0].path).parts[0] == "examples"  # relative to the repository root
