"""Task metrics for generated answers against reference answers.

Per example: normalized exact match, token F1 and ROUGE-L (the `rouge-score` library). Per
system: their means, plus, when the answers carry a label (the answer itself is one of a small
closed set, or a JSON answer has a field with a small closed set of values), accuracy,
macro-F1 and the most frequent confusions, and for JSON answers the valid-JSON rate.

`AnswerKind` is decided once from the reference answers (and the training answers, which show
the label set better than a small test set does), so every system is scored the same way.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tunecraft.labels import is_closed_set  # the one closed-set rule (training records the same set)

# Share of references that must parse as JSON objects to call the answers JSON.
JSON_SHARE = 0.9
NO_LABEL = "<none>"  # the predicted label when none could be read from the answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


# ----------------------------------------------------------------------------- text metrics


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (SQuAD style)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the multiset overlap of normalized tokens (1.0 when both are empty)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class RougeL:
    """ROUGE-L F-measure through `rouge-score` (one scorer reused: building it is not free)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, prediction: str, reference: str) -> float:
        return float(self._scorer.score(reference, prediction)["rougeL"].fmeasure)


# ----------------------------------------------------------------------------- answer kinds


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The answer as a JSON object when the whole (stripped) answer is one, else None."""
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _embedded_json_object(text: str) -> dict[str, Any] | None:
    """A JSON object inside surrounding prose or a code fence (lenient, for reading labels)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    return parse_json_object(text[start : end + 1])


@dataclass(frozen=True)
class AnswerKind:
    """How answers are scored: free text, a label, or JSON (maybe with a label field)."""

    kind: Literal["text", "label", "json"]
    label_field: str | None = None  # JSON only: the field read as the label
    labels: tuple[str, ...] = ()  # the closed set (sorted), empty for free text
    json_keys: tuple[str, ...] = ()  # JSON only: keys every reference has, in reference order

    @property
    def has_labels(self) -> bool:
        return bool(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "label_field": self.label_field,
            "labels": list(self.labels),
            "json_keys": list(self.json_keys),
        }


def _common_keys(objects: list[dict[str, Any]]) -> tuple[str, ...]:
    first = list(objects[0])
    return tuple(k for k in first if all(k in o for o in objects))


def detect_kind(answers: Sequence[str]) -> AnswerKind:
    """Decide from reference (and training) answers how to score; see the module docstring."""
    answers = [a for a in answers if a.strip()]
    if not answers:
        return AnswerKind("text")
    objects = [o for o in (parse_json_object(a) for a in answers) if o is not None]
    if objects and len(objects) >= JSON_SHARE * len(answers):
        keys = _common_keys(objects)
        best: tuple[int, str] | None = None
        for key in keys:
            values = [o[key] for o in objects]
            if all(isinstance(v, str) for v in values) and is_closed_set(values):
                # The field with the most classes is the most informative label
                # ("intent" over "priority"); ties go to the earlier key.
                if best is None or len(set(values)) > best[0]:
                    best = (len(set(values)), key)
        if best is None:
            return AnswerKind("json", json_keys=keys)
        labels = tuple(sorted({str(o[best[1]]) for o in objects}))
        return AnswerKind("json", best[1], labels, keys)
    stripped = [a.strip() for a in answers]
    if is_closed_set(stripped):
        return AnswerKind("label", labels=tuple(sorted(set(stripped))))
    return AnswerKind("text")


def read_label(text: str, kind: AnswerKind) -> str:
    """The label an answer gives, or NO_LABEL. Lenient: fences and prose around JSON are fine."""
    if kind.kind == "json" and kind.label_field:
        obj = parse_json_object(text) or _embedded_json_object(text)
        value = obj.get(kind.label_field) if obj else None
        if isinstance(value, str):
            return value.strip()
        match = re.search(rf'"{re.escape(kind.label_field)}"\s*:\s*"([^"]*)"', text)
        return match.group(1).strip() if match else NO_LABEL
    if kind.kind == "label":
        answer = text.strip()
        if answer in kind.labels:
            return answer
        # A label wrapped in a few words ("Label: refund.") still counts when exactly one fits.
        found = [lab for lab in kind.labels if normalize(lab) and normalize(lab) in normalize(answer).split()]
        return found[0] if len(found) == 1 else (answer or NO_LABEL)
    return NO_LABEL


# ----------------------------------------------------------------------------- classification


def accuracy(predicted: Sequence[str], reference: Sequence[str]) -> float:
    assert len(predicted) == len(reference)
    if not reference:
        return 0.0
    return sum(p == r for p, r in zip(predicted, reference)) / len(reference)


def macro_f1(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """Mean per-class F1 over the classes present in the references.

    Classes that only appear as (wrong) predictions are not averaged in: they already cost
    the true class its recall, and averaging them would reward inventing no labels at all.
    """
    classes = sorted(set(reference))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(p == c and r == c for p, r in zip(predicted, reference))
        fp = sum(p == c and r != c for p, r in zip(predicted, reference))
        fn = sum(p != c and r == c for p, r in zip(predicted, reference))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def per_label(predicted: Sequence[str], reference: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support of every class present in the references (by support)."""
    rows = []
    for c in sorted(set(reference), key=lambda c: (-sum(r == c for r in reference), c)):
        tp = sum(p == c and r == c for p, r in zip(predicted, reference))
        n_pred = sum(p == c for p in predicted)
        n_ref = sum(r == c for r in reference)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_ref if n_ref else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"label": c, "precision": precision, "recall": recall, "f1": f1, "support": n_ref})
    return rows


def label_metrics(predicted: Sequence[str], reference: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label scores, top confusions, and answers that are no label of the set."""
    valid = set(labels)
    return {
        "accuracy": accuracy(predicted, reference),
        "macro_f1": macro_f1(predicted, reference),
        "per_label": per_label(predicted, reference),
        "confusions": confusions(predicted, reference, top=10),
        "invalid_labels": sum(p not in valid for p in predicted),
    }


def confusions(predicted: Sequence[str], reference: Sequence[str], top: int = 5) -> list[dict[str, Any]]:
    """The most frequent (reference -> predicted) mistakes, most frequent first."""
    counts = Counter((r, p) for p, r in zip(predicted, reference) if p != r)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"reference": r, "predicted": p, "count": n} for (r, p), n in ranked[:top]]


# ----------------------------------------------------------------------------- per system


@dataclass
class ExampleScore:
    exact_match: float
    token_f1: float
    rouge_l: float
    correct: bool  # label right when there are labels, else exact match
    valid_json: bool | None = None
    label: str | None = None
    reference_label: str | None = None


@dataclass
class SystemScores:
    """Aggregates of one system over the evaluated examples."""

    exact_match: float
    token_f1: float
    rouge_l: float
    valid_json_rate: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    confusions: list[dict[str, Any]] = field(default_factory=list)
    per_label: list[dict[str, Any]] | None = None
    invalid_labels: int | None = None  # answers that are no label of the set

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def score_example(prediction: str, reference: str, kind: AnswerKind, rouge: RougeL) -> ExampleScore:
    em = exact_match(prediction, reference)
    score = ExampleScore(em, token_f1(prediction, reference), rouge(prediction, reference), bool(em))
    if kind.kind == "json":
        score.valid_json = parse_json_object(prediction) is not None
    if kind.has_labels:
        score.label = read_label(prediction, kind)
        score.reference_label = read_label(reference, kind)
        score.correct = score.label == score.reference_label
    return score


def aggregate(scores: Sequence[ExampleScore], kind: AnswerKind) -> SystemScores:
    n = max(1, len(scores))
    out = SystemScores(
        exact_match=sum(s.exact_match for s in scores) / n,
        token_f1=sum(s.token_f1 for s in scores) / n,
        rouge_l=sum(s.rouge_l for s in scores) / n,
    )
    if kind.kind == "json":
        out.valid_json_rate = sum(bool(s.valid_json) for s in scores) / n
    if kind.has_labels:
        pred = [s.label or NO_LABEL for s in scores]
        ref = [s.reference_label or NO_LABEL for s in scores]
        lm = label_metrics(pred, ref, kind.labels)
        out.accuracy, out.macro_f1, out.confusions = lm["accuracy"], lm["macro_f1"], lm["confusions"]
        out.per_label, out.invalid_labels = lm["per_label"], lm["invalid_labels"]
    return out


def main_metric(kind: AnswerKind) -> str:
    """The metric the verdict and the intervals are about: label accuracy, else token F1."""
    return "accuracy" if kind.has_labels else "token_f1"


def per_example_main(scores: Sequence[ExampleScore], kind: AnswerKind) -> list[float]:
    """Per-example values whose mean is the main metric (what the bootstrap resamples)."""
    if kind.has_labels:
        return [float(s.correct) for s in scores]
    return [s.token_f1 for s in scores]
