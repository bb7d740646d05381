"""Bootstrap intervals: seeded, containing the mean, paired."""

from __future__ import annotations

from tunecraft.eval.bootstrap import bootstrap_mean, bootstrap_paired_diff


def test_interval_is_seeded_and_contains_the_mean() -> None:
    values = [1.0] * 30 + [0.0] * 20
    a = bootstrap_mean(values, resamples=500, seed=3)
    b = bootstrap_mean(values, resamples=500, seed=3)
    assert a == b
    assert a.mean == 0.6 and a.low < 0.6 < a.high
    # the binomial standard error is sqrt(.6*.4/50) ~ 0.069: a 95% interval is about +-0.14
    assert 0.1 < a.high - a.low < 0.4


def test_constant_and_tiny_inputs() -> None:
    iv = bootstrap_mean([0.5] * 10)
    assert (iv.low, iv.mean, iv.high) == (0.5, 0.5, 0.5)
    assert bootstrap_mean([]).mean == 0.0
    assert bootstrap_mean([2.0]).low == 2.0


def test_paired_difference_cancels_shared_difficulty() -> None:
    # B is right on a subset of A's right answers: the paired difference is always >= 0
    a = [1.0] * 40 + [0.0] * 10
    b = [1.0] * 30 + [0.0] * 20
    diff = bootstrap_paired_diff(a, b)
    assert diff.mean == 0.2 and diff.low > 0
    same = bootstrap_paired_diff(a, a)
    assert (same.low, same.high) == (0.0, 0.0)
