"""Overfitting and ship verdicts on synthetic curves."""

from __future__ import annotations

import math

from tunecraft.eval.bootstrap import Interval
from tunecraft.curves import RunSettings, overfitting_verdict
from tunecraft.eval.verdict import ship_verdict


def _train(losses: list[float], per_epoch: int = 10) -> list[dict]:
    return [{"step": i + 1, "loss": x, "epoch": (i + 1) / per_epoch} for i, x in enumerate(losses)]


def _evals(points: list[tuple[int, float]]) -> list[dict]:
    return [{"step": s, "val_loss": v} for s, v in points]


def test_healthy_plateau() -> None:
    train = _train([2.0 - 0.015 * i for i in range(60)])
    evals = _evals([(10, 1.6), (20, 1.3), (30, 1.2), (40, 1.17), (50, 1.16), (60, 1.16)])
    v = overfitting_verdict(train, evals)
    assert v.status == "healthy" and v.best_step == 50 and v.onset_step is None
    assert v.recommended["step"] == 50 and not v.suggestions


def test_overfitting_names_the_turn() -> None:
    train = _train([2.0 - 0.025 * i for i in range(60)])  # ends at 0.525: not near zero
    evals = _evals([(10, 1.6), (20, 1.3), (30, 1.25), (40, 1.33), (50, 1.45), (60, 1.6)])
    v = overfitting_verdict(train, evals, RunSettings("lora", 1e-3, 6, 16), {30, 60})
    assert v.status == "overfitting"
    assert v.onset_step == 30 and v.onset_epoch == 3.0
    assert v.recommended == {"step": 30, "path": "model/", "checkpoint": "checkpoints/step-000030",
                             "reason": v.recommended["reason"]}
    text = " ".join(v.suggestions)
    assert "train.epochs=3" in text and "train.lr=0.0005" in text and "lora.r=8" in text
    assert "step 30" in v.message


def test_memorizing_when_train_loss_is_near_zero() -> None:
    train = _train([max(0.01, 2.0 - 0.1 * i) for i in range(40)])
    evals = _evals([(10, 1.5), (20, 1.4), (30, 1.9), (40, 2.4)])
    v = overfitting_verdict(train, evals, RunSettings("full", 1e-4, 4))
    assert v.status == "memorizing" and v.onset_step == 20
    assert any("LoRA instead" in s for s in v.suggestions)


def test_underfitting_when_still_falling_or_flat() -> None:
    falling = overfitting_verdict(_train([3.0 - 0.01 * i for i in range(30)]),
                                  _evals([(10, 2.9), (20, 2.6), (30, 2.3)]), RunSettings("lora", 1e-4, 1, 8))
    assert falling.status == "underfitting"
    assert any("train.epochs=2" in s for s in falling.suggestions)
    flat = overfitting_verdict(_train([3.0] * 30), _evals([(10, 3.0), (20, 2.999), (30, 2.998)]))
    assert flat.status == "underfitting"


def test_small_wiggle_is_not_overfitting_and_no_evals_is_unknown() -> None:
    wiggle = overfitting_verdict(_train([1.0] * 30), _evals([(10, 1.2), (20, 1.0), (30, 1.02)]))
    assert wiggle.status == "healthy"  # +2% is noise, below the 5% rise threshold
    assert overfitting_verdict(_train([1.0]), []).status == "unknown"
    nan = overfitting_verdict(_train([1.0]), [{"step": 1, "val_loss": math.nan}])
    assert nan.status == "unknown"


def test_ship_verdict() -> None:
    tuned = Interval(0.9, 0.83, 0.96)
    good = {"base": (Interval(0.1, 0.05, 0.17), Interval(0.8, 0.7, 0.88)),
            "prompted": (Interval(0.4, 0.3, 0.5), Interval(0.5, 0.4, 0.6))}
    assert ship_verdict("accuracy", tuned, good, None).ship
    close = {**good, "prompted": (Interval(0.85, 0.77, 0.92), Interval(0.05, -0.02, 0.12))}
    no = ship_verdict("accuracy", tuned, close, None)
    assert not no.ship and "prompted" in no.line and no.line.startswith("do not ship")
    memo = overfitting_verdict(_train([0.001] * 40), _evals([(10, 1.0), (20, 1.5)]))
    assert not ship_verdict("accuracy", tuned, good, memo).ship


def test_converged_run_with_tiny_losses_is_healthy() -> None:
    # the demo's shape: validation loss ~0.01 still improving by 10% relative, 0.001 absolute
    train = _train([max(0.008, 2.0 * 0.85 ** i) for i in range(80)])
    evals = _evals([(8, 1.45), (16, 0.52), (24, 0.15), (32, 0.052), (40, 0.055), (48, 0.021),
                    (56, 0.0118), (64, 0.0106), (72, 0.0101), (80, 0.0098)])
    assert overfitting_verdict(train, evals).status == "healthy"


def test_a_single_evaluation_gets_a_verdict() -> None:
    """An interrupted run may have evaluated once; the verdict must not crash on it."""
    train = [{"type": "train", "step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 4)]
    v = overfitting_verdict(train, [{"type": "eval", "step": 2, "val_loss": 1.9}])
    assert v.best_step == 2 and v.status == "healthy"  # one point: nothing has turned yet
