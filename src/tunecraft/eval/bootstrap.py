"""Seeded bootstrap confidence intervals: one system's mean, and paired differences.

The paired interval resamples the *same* example indices for both systems, so it answers
"is A better than B on examples like these?" with far less noise than comparing two separate
intervals (examples that are hard for both cancel out).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

RESAMPLES = 1000
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def _resample_indices(n: int, resamples: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(resamples)]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values, q in [0, 1]."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _interval(mean: float, stats: list[float], confidence: float) -> Interval:
    stats.sort()
    tail = (1 - confidence) / 2
    return Interval(mean, _percentile(stats, tail), _percentile(stats, 1 - tail))


def bootstrap_mean(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile interval of the mean of `values` (a point interval for 0 or 1 value)."""
    n = len(values)
    if n == 0:
        return Interval(0.0, 0.0, 0.0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, mean, mean)
    stats = [sum(values[i] for i in idx) / n for idx in _resample_indices(n, resamples, seed)]
    return _interval(mean, stats, confidence)


def bootstrap_paired_diff(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Interval of mean(a) - mean(b) over the same examples, resampled together."""
    assert len(a) == len(b), "paired bootstrap needs one value per example from each system"
    diffs = [x - y for x, y in zip(a, b)]
    return bootstrap_mean(diffs, resamples, seed, confidence)


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Interval of sum(numerators) / sum(denominators), resampling units (documents) whole: a
    per-token mean whose tokens come in clusters of very different sizes."""
    assert len(numerators) == len(denominators), "one numerator and one denominator per unit"
    n, den = len(numerators), sum(denominators)
    mean = sum(numerators) / den if den else 0.0
    if n < 2:
        return Interval(mean, mean, mean)
    stats = []
    for idx in _resample_indices(n, resamples, seed):
        d = sum(denominators[i] for i in idx)
        stats.append(sum(numerators[i] for i in idx) / d if d else 0.0)
    return _interval(mean, stats, confidence)
