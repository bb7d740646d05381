"""Pinned numbers: short tiny-model runs must reproduce `pinned.json` within stated tolerances.

Invariance tests (packed == padded, resumed == straight) pass for any change that alters both
sides alike; these catch that: a different mask, normalization, schedule, data order or init
moves the per-step losses far beyond the tolerances. The fast and reference engines are also
held to each other here, step for step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scenarios import PINNED, SCENARIOS, make_assets, run_scenario

PINS = json.loads(PINNED.read_text())


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("references")
    model, data = make_assets(root)
    return model, data, root


def _close(name: str, key: str, got: list[float], want: list[float], tol: float) -> None:
    assert len(got) == len(want), f"{name}.{key}: {len(got)} values, pinned {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert math.isclose(g, w, rel_tol=tol, abs_tol=tol), f"{name}.{key}[{i}]: {g!r} vs pinned {w!r}"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_run_reproduces_pinned_numbers(assets, name: str) -> None:
    model, data, root = assets
    got = run_scenario(name, model, data, root)
    want = PINS["scenarios"][name]
    tol = PINS["tolerance"]
    assert got["step"] == want["step"] and got["eval_step"] == want["eval_step"]
    assert got["tokens"] == want["tokens"]  # loss-bearing tokens: exact
    for key in ("loss", "grad_norm", "lr", "val_loss"):
        _close(name, key, got[key], want[key], tol[key])


def test_pins_are_real_training() -> None:
    """The pinned curves move (a broken pin file of constants would pass everything)."""
    for name, pin in PINS["scenarios"].items():
        assert pin["loss"][-1] < pin["loss"][0] - 0.1, name
        assert len(set(pin["lr"])) > 2, name  # warmup + decay, not a constant


def test_engines_agree_step_for_step() -> None:
    scen = PINS["scenarios"]
    for method in ("full", "lora"):
        fast, ref = scen[f"{method}-fast"], scen[f"{method}-reference"]
        _close(method, "loss", fast["loss"], ref["loss"], 1e-5)
        _close(method, "val_loss", fast["val_loss"], ref["val_loss"], 1e-5)
