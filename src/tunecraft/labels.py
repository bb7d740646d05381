"""Closed-label tasks: the label set a run's answers form, its reject label, and the threshold.

When every assistant answer of the training data is one of a bounded set of short answers, each
repeated (support intents, ticket categories), the task is classification: training records the
set in `RUN_DIR/labels.json` (through `rundir`), and eval, chat and serve decode constrained to it
(`tunecraft.constrained`), so every answer is a label with a probability over the set.

A *reject label* (`out_of_scope`, `other`, or `data.reject_label`) means "none of the others".
Answers whose top probability is below a threshold become it. The threshold is calibrated on the
validation split at the end of training (the model and the split are at hand there; serve needs
the threshold without any eval having run; and the test set must never tune what it measures):
the highest reject recall whose in-scope accuracy stays within `TOLERANCE` of the accuracy
without rejection. Pure Python: training, eval and serve all use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# A "small closed set": at most this many distinct values (CLINC150 has 151 with out_of_scope)...
MAX_LABELS = 200
# ...each seen on average at least this many times (else it is free text, e.g. names or ids).
MIN_PER_LABEL = 2.0
# Labels are short; a set of long sentences is free text even if it repeats.
MAX_LABEL_WORDS = 5
# Names that mean "none of the others" (compared lower-case, '-' and ' ' read as '_').
REJECT_NAMES = ("out_of_scope", "other")
# In-scope accuracy the reject threshold may cost on validation (absolute, 1 point).
TOLERANCE = 0.01
# Thresholds shown in the curve besides the chosen one.
CURVE_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def is_closed_set(values: Sequence[str]) -> bool:
    """A bounded number of distinct short values, each repeated on average."""
    distinct = set(values)
    return (
        2 <= len(distinct) <= MAX_LABELS
        and len(values) / len(distinct) >= MIN_PER_LABEL
        and all(len(v.split()) <= MAX_LABEL_WORDS for v in distinct)
    )


def _reject_key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


# ----------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Point:
    """Rejection at one threshold: answers with confidence below it become the reject label."""

    threshold: float
    in_scope_accuracy: float | None  # over examples whose reference is not the reject label
    reject_recall: float | None  # over examples whose reference is the reject label
    rejected_share: float  # of all examples, answered with the reject label


@dataclass(frozen=True)
class Calibration:
    threshold: float
    split: str  # what it was chosen on: always "validation"
    examples: int
    reject_examples: int
    chosen: Point
    without: Point  # threshold 0: the model's own answers
    tolerance: float
    reason: str
    curve: tuple[Point, ...] = ()
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["curve"] = [asdict(p) for p in self.curve]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            threshold=float(d["threshold"]), split=d.get("split", "validation"), examples=int(d["examples"]),
            reject_examples=int(d["reject_examples"]), chosen=Point(**d["chosen"]), without=Point(**d["without"]),
            tolerance=float(d["tolerance"]), reason=str(d["reason"]),
            curve=tuple(Point(**p) for p in d.get("curve", [])), seconds=float(d.get("seconds", 0.0)),
        )


def decide(label: str, confidence: float, threshold: float, reject: str | None) -> str:
    """The answer after rejection: the reject label when the model is less sure than `threshold`."""
    return reject if reject is not None and confidence < threshold else label


def rejection_point(predicted: Sequence[str], confidence: Sequence[float], reference: Sequence[str],
                    reject: str, threshold: float) -> Point:
    final = [decide(p, c, threshold, reject) for p, c in zip(predicted, confidence)]
    inside = [f == r for f, r in zip(final, reference) if r != reject]
    outside = [f == reject for f, r in zip(final, reference) if r == reject]
    return Point(
        threshold=round(threshold, 6),
        in_scope_accuracy=sum(inside) / len(inside) if inside else None,
        reject_recall=sum(outside) / len(outside) if outside else None,
        rejected_share=sum(f == reject for f in final) / max(1, len(final)),
    )


def rejection_curve(predicted: Sequence[str], confidence: Sequence[float], reference: Sequence[str],
                    reject: str, extra: Sequence[float] = ()) -> tuple[Point, ...]:
    grid = sorted(set(CURVE_GRID) | {round(t, 6) for t in extra})
    return tuple(rejection_point(predicted, confidence, reference, reject, t) for t in grid)


def calibrate(predicted: Sequence[str], confidence: Sequence[float], reference: Sequence[str],
              reject: str, tolerance: float = TOLERANCE) -> Calibration:
    """Choose the reject threshold on validation answers (the model's label and its probability).

    Candidates are 0 and every distinct confidence. Feasible: in-scope accuracy at least the
    accuracy without rejection minus `tolerance`. Chosen: the feasible one with the highest
    reject recall, ties to the higher threshold (unfamiliar inputs at serving time are rarely like
    the few reject examples of validation, so the in-scope budget is spent on caution).
    """
    assert len(predicted) == len(confidence) == len(reference)
    without = rejection_point(predicted, confidence, reference, reject, 0.0)
    base = without.in_scope_accuracy if without.in_scope_accuracy is not None else 0.0
    candidates = sorted({0.0} | {round(c, 6) for c in confidence})
    best = without
    for t in candidates:
        point = rejection_point(predicted, confidence, reference, reject, t)
        if point.in_scope_accuracy is not None and point.in_scope_accuracy < base - tolerance - 1e-12:
            continue
        if (point.reject_recall or 0.0, t) >= (best.reject_recall or 0.0, best.threshold):
            best = point
    n_reject = sum(r == reject for r in reference)
    reason = _reason(best, without, tolerance, n_reject)
    curve = rejection_curve(predicted, confidence, reference, reject, extra=[best.threshold])
    return Calibration(best.threshold, "validation", len(reference), n_reject, best, without, tolerance, reason, curve)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _reason(best: Point, without: Point, tolerance: float, n_reject: int) -> str:
    budget = f"in-scope accuracy within {100 * tolerance:.0f} point of the {_pct(without.in_scope_accuracy)} without rejection"
    if n_reject == 0:
        return (f"no validation example carries the reject label, so the threshold is the highest that keeps "
                f"{budget} (in-scope {_pct(best.in_scope_accuracy)}, {_pct(best.rejected_share)} of answers rejected)")
    return (f"the highest reject recall on validation ({_pct(best.reject_recall)} of {n_reject} reject examples, "
            f"{_pct(without.reject_recall)} without a threshold) that keeps {budget} "
            f"(in-scope {_pct(best.in_scope_accuracy)})")


# ----------------------------------------------------------------------------- the label set


@dataclass(frozen=True)
class LabelSet:
    """A run's closed label set, as `labels.json` records it."""

    labels: tuple[str, ...]  # sorted
    reject_label: str | None = None
    reject_source: str | None = None  # "data.reject_label" or "name"
    counts: dict[str, int] = field(default_factory=dict)  # training answers per label
    detected: str = ""  # how the set was recognised, in words
    calibration: Calibration | None = None

    @property
    def threshold(self) -> float:
        """Answers less sure than this become the reject label (0: no rejection)."""
        return self.calibration.threshold if self.calibration is not None and self.reject_label else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels), "reject_label": self.reject_label, "reject_source": self.reject_source,
            "counts": self.counts, "detected": self.detected,
            "calibration": self.calibration.to_json() if self.calibration is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSet:
        labels = d.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(labels) < 2:
            raise ValueError("labels.json: 'labels' must be a list of at least two strings")
        reject = d.get("reject_label")
        if reject is not None and reject not in labels:
            raise ValueError(f"labels.json: reject_label {reject!r} is not one of the labels")
        cal = d.get("calibration")
        return cls(tuple(labels), reject, d.get("reject_source"), dict(d.get("counts") or {}),
                   str(d.get("detected", "")), Calibration.from_json(cal) if cal else None)

    def with_calibration(self, calibration: Calibration | None) -> LabelSet:
        return LabelSet(self.labels, self.reject_label, self.reject_source, self.counts, self.detected, calibration)


def detect_label_set(answers: Sequence[str], reject_label: str | None = None) -> LabelSet | None:
    """The closed label set of training answers, or None when the answers are free text.

    `reject_label` (data.reject_label) names the reject label; without it a label named like one
    of REJECT_NAMES is taken. A configured reject label absent from the answers joins the set
    (the model has never produced it, so only the threshold will).
    """
    stripped = [a.strip() for a in answers if a.strip()]
    if not is_closed_set(stripped):
        return None
    counts = Counter(stripped)
    labels = set(counts)
    source = None
    if reject_label is not None:
        reject: str | None = reject_label.strip()
        labels.add(reject)
        source = "data.reject_label"
    else:
        named = [lab for lab in sorted(labels) if _reject_key(lab) in REJECT_NAMES]
        reject = named[0] if named else None
        source = "name" if named else None
    detected = (f"{len(stripped)} training answers take {len(counts)} distinct values (at most {MAX_LABELS}, "
                f"each at most {MAX_LABEL_WORDS} words, {len(stripped) / len(counts):.1f} answers per value)")
    return LabelSet(tuple(sorted(labels)), reject, source, dict(counts.most_common()), detected)
