"""The classical baseline for closed-label tasks: TF-IDF features and logistic regression.

Trained on the run's own training split (the same rows the model was tuned on), scored on the
same test cases, so the user sees whether an LLM was needed at all: for intent routing a linear
model on word and character n-grams has been a strong, cheap baseline for years.

Features: word 1-2-grams and character 2-5-grams within word boundaries, each TF-IDF with
sublinear term frequency (1 + log tf) and smoothed idf, l2-normalized, side by side.
Classifier: multinomial logistic regression (lbfgs, C=10: text features are many and sparse,
so weak regularization fits better; fixed here, not tuned on test).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunecraft.eval import metrics as M
from tunecraft.eval.cases import EvalCase

C = 10.0
MAX_ITER = 2000


def case_text(case: EvalCase) -> str:
    """What the classifier reads: the conversation's user turns (the system prompt is the same everywhere)."""
    return "\n".join(m["content"] for m in case.messages if m["role"] == "user")


def build_pipeline(seed: int = 0) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, lowercase=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, lowercase=True),
    )
    return make_pipeline(features, LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed))


@dataclass
class ClassicalResult:
    predictions: list[str]
    reference: list[str]
    correct: list[bool]
    scores: dict[str, Any]  # metrics.label_metrics
    train_examples: int
    seconds: float


def fit_predict(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                seed: int = 0) -> list[str]:
    """Fit on the training texts and labels, predict the test texts' labels."""
    if len(set(train_labels)) < 2:
        return [train_labels[0] if train_labels else M.NO_LABEL] * len(test_texts)
    model = build_pipeline(seed)
    model.fit(list(train_texts), list(train_labels))
    return [str(p) for p in model.predict(list(test_texts))]


def run_classical(train: Sequence[EvalCase], test: Sequence[EvalCase], kind: M.AnswerKind, seed: int = 0) -> ClassicalResult:
    """TF-IDF + logistic regression on the training cases' labels, scored like every other system."""
    t0 = time.time()
    labelled = [(case_text(c), M.read_label(c.reference, kind)) for c in train]
    labelled = [(t, y) for t, y in labelled if y != M.NO_LABEL]
    predicted = fit_predict([t for t, _ in labelled], [y for _, y in labelled], [case_text(c) for c in test], seed)
    reference = [M.read_label(c.reference, kind) for c in test]
    scores = M.label_metrics(predicted, reference, kind.labels)
    return ClassicalResult(predicted, reference, [p == r for p, r in zip(predicted, reference)], scores,
                           len(labelled), time.time() - t0)
