"""Pins the learning-rate schedule and the AdamW parameter groups to exact numbers.

`lr_factor(step, total, warmup, schedule)` multiplies the peak LR for 0-based optimizer step
`step`: a linear warmup (step + 1) / warmup, then with progress p = (step - warmup) /
(total - warmup) either 0.5 * (1 + cos(pi * p)) (cosine), 1 - p (linear) or 1 (constant).
`build_optimizer` puts >= 2-D parameters in a decayed group and 1-D ones (norms, biases) in a
group with weight decay 0, with betas (0.9, 0.999) and eps 1e-8.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunecraft.train.optim import build_optimizer, lr_factor, set_lr


def _cosine(step: int, total: int, warmup: int) -> float:
    """The documented formula, written out independently of the module."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _linear(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max(0.0, 1.0 - progress)


# ---- literal numbers (total=10, warmup=2) -------------------------------------------------------

COSINE_10_2 = [0.5, 1.0, 1.0, 0.961940, 0.853553, 0.691342, 0.5, 0.308658, 0.146447, 0.038060]
LINEAR_10_2 = [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_cosine_literal_values_with_warmup() -> None:
    got = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert got == pytest.approx(COSINE_10_2, abs=1e-6)


def test_linear_literal_values_with_warmup() -> None:
    got = [lr_factor(s, 10, 2, "linear") for s in range(10)]
    assert got == pytest.approx(LINEAR_10_2, abs=1e-12)


def test_constant_is_warmup_then_one() -> None:
    assert [lr_factor(s, 10, 4, "constant") for s in range(10)] == [
        0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    ]
    assert [lr_factor(s, 10, 0, "constant") for s in range(10)] == [1.0] * 10


# ---- formula at several points ------------------------------------------------------------------

@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 1), (10, 3), (7, 2), (100, 5), (3, 2)])
def test_cosine_matches_the_formula(total: int, warmup: int) -> None:
    for step in range(total + 2):  # past the end too: progress is clamped at 1
        assert lr_factor(step, total, warmup, "cosine") == pytest.approx(
            _cosine(step, total, warmup), abs=1e-12
        ), step


@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 1), (10, 3), (7, 2), (100, 5), (3, 2)])
def test_linear_matches_the_formula(total: int, warmup: int) -> None:
    for step in range(total + 2):
        assert lr_factor(step, total, warmup, "linear") == pytest.approx(
            _linear(step, total, warmup), abs=1e-12
        ), step


def test_warmup_boundaries() -> None:
    # The first step already trains (1/warmup, not 0); the last warmup step reaches the peak.
    assert lr_factor(0, 20, 4, "cosine") == 0.25
    assert lr_factor(3, 20, 4, "cosine") == 1.0
    # The first step after warmup is the peak again (progress 0), then decay starts.
    assert lr_factor(4, 20, 4, "cosine") == 1.0
    assert lr_factor(5, 20, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 16)))
    assert lr_factor(4, 20, 4, "linear") == 1.0
    assert lr_factor(5, 20, 4, "linear") == pytest.approx(1 - 1 / 16)


def test_step_zero_without_warmup_is_the_peak() -> None:
    for schedule in ("cosine", "linear", "constant"):
        assert lr_factor(0, 10, 0, schedule) == 1.0, schedule


def test_last_step_does_not_reach_zero_but_total_does() -> None:
    # Step total-1 is the last optimizer step: progress (total-1-warmup)/(total-warmup) < 1.
    assert lr_factor(9, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert lr_factor(9, 10, 0, "cosine") == pytest.approx(0.024472, abs=1e-6)
    assert lr_factor(9, 10, 0, "linear") == pytest.approx(0.1)
    assert lr_factor(10, 10, 0, "cosine") == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(10, 10, 0, "linear") == 0.0
    # Beyond the end the factor stays at its floor (progress is clamped), never negative.
    assert lr_factor(25, 10, 0, "linear") == 0.0
    assert lr_factor(25, 10, 0, "cosine") == pytest.approx(0.0, abs=1e-15)


def test_total_of_one_and_degenerate_warmup() -> None:
    for schedule in ("cosine", "linear", "constant"):
        assert lr_factor(0, 1, 0, schedule) == 1.0, schedule
        # warmup covering the whole run: warmup ramp, then constant (no division by zero)
        assert lr_factor(0, 1, 1, schedule) == 1.0, schedule
        assert lr_factor(0, 2, 4, schedule) == 0.25, schedule
        assert lr_factor(5, 2, 4, schedule) == 1.0, schedule
        assert lr_factor(0, 0, 0, schedule) == 1.0, schedule


def test_cosine_halfway_is_one_half_and_quarter_points() -> None:
    assert lr_factor(50, 100, 0, "cosine") == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(25, 100, 0, "cosine") == pytest.approx((2 + math.sqrt(2)) / 4)
    assert lr_factor(75, 100, 0, "cosine") == pytest.approx((2 - math.sqrt(2)) / 4)


# ---- the optimizer ------------------------------------------------------------------------------

def _params() -> tuple[torch.nn.Parameter, torch.nn.Parameter, torch.nn.Parameter]:
    weight = torch.nn.Parameter(torch.ones(3, 4))
    bias = torch.nn.Parameter(torch.ones(3))
    norm = torch.nn.Parameter(torch.ones(4))
    return weight, bias, norm


@pytest.mark.parametrize("fused", [False, True])
def test_param_groups_split_decay_by_dimension(fused: bool) -> None:
    weight, bias, norm = _params()
    opt = build_optimizer([bias, weight, norm], lr=3e-4, weight_decay=0.1, fused=fused)
    assert len(opt.param_groups) == 2
    decayed, plain = opt.param_groups
    assert [id(p) for p in decayed["params"]] == [id(weight)]
    assert [id(p) for p in plain["params"]] == [id(bias), id(norm)]
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    for group in opt.param_groups:
        assert group["lr"] == 3e-4
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is (True if fused else None)
    assert opt.defaults["foreach"] is (None if fused else False)


def test_empty_groups_are_dropped() -> None:
    weight, bias, _ = _params()
    only_matrix = build_optimizer([weight], lr=1e-3, weight_decay=0.05, fused=False)
    assert [(len(g["params"]), g["weight_decay"]) for g in only_matrix.param_groups] == [(1, 0.05)]
    only_vector = build_optimizer([bias], lr=1e-3, weight_decay=0.05, fused=False)
    assert [(len(g["params"]), g["weight_decay"]) for g in only_vector.param_groups] == [(1, 0.0)]


def test_one_step_matches_hand_computed_adamw() -> None:
    """The first AdamW step moves each weight by lr * sign(grad) plus decoupled decay."""
    weight, bias, _ = _params()
    opt = build_optimizer([weight, bias], lr=0.1, weight_decay=0.5, fused=False)
    weight.grad = torch.full_like(weight, 2.0)
    bias.grad = torch.full_like(bias, -3.0)
    opt.step()
    # Step 1: m_hat = g, v_hat = g^2 -> update = g / (|g| + eps) ~ sign(g).
    # Decoupled decay first: w <- w * (1 - lr * wd) = 1 * (1 - 0.05) = 0.95; then 0.95 - 0.1.
    assert torch.allclose(weight, torch.full_like(weight, 0.85), atol=1e-6)
    assert torch.allclose(bias, torch.full_like(bias, 1.1), atol=1e-6)  # no decay on 1-D


def test_set_lr_sets_every_group() -> None:
    weight, bias, _ = _params()
    opt = build_optimizer([weight, bias], lr=1e-3, weight_decay=0.1, fused=False)
    set_lr(opt, 2.5e-5)
    assert [g["lr"] for g in opt.param_groups] == [2.5e-5, 2.5e-5]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # untouched
