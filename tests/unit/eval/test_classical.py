"""The classical baseline and per-label metrics, computed by hand on tiny data."""

from __future__ import annotations

import math

import pytest

from tunecraft.eval import metrics as M
from tunecraft.eval.cases import EvalCase
from tunecraft.eval.classical import build_pipeline, fit_predict, run_classical


def test_word_tfidf_features_by_hand() -> None:
    """The word half of the features: sublinear tf, smoothed idf, l2 norm (what the module says)."""
    docs = ["card card lost", "lost money", "card"]
    word = build_pipeline().steps[0][1].transformer_list[0][1]
    matrix = word.fit_transform(docs).toarray()
    vocab = word.vocabulary_
    n = len(docs)
    df = {"card": 2, "lost": 2, "money": 1, "card card": 1, "card lost": 1, "lost money": 1}
    idf = {t: math.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}
    raw = {"card": (1 + math.log(2)) * idf["card"], "lost": idf["lost"], "card card": idf["card card"],
           "card lost": idf["card lost"]}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    for term, value in raw.items():
        assert matrix[0, vocab[term]] == pytest.approx(value / norm)
    assert matrix[0, vocab["money"]] == 0.0 and matrix[2, vocab["card"]] == pytest.approx(1.0)


def test_logistic_regression_learns_separable_keywords() -> None:
    train = ["refund please", "my refund", "refund money", "card lost", "lost my card", "card gone"]
    labels = ["refund", "refund", "refund", "card_lost", "card_lost", "card_lost"]
    assert fit_predict(train, labels, ["where is my refund", "i lost the card"]) == ["refund", "card_lost"]


def test_per_label_precision_recall_f1_by_hand() -> None:
    pred = ["a", "a", "b", "b", "c", "a"]
    ref = ["a", "b", "b", "b", "a", "c"]
    rows = {r["label"]: r for r in M.per_label(pred, ref)}
    # a: predicted 3 times, right once; 2 references -> P 1/3, R 1/2, F1 2PR/(P+R) = 0.4
    assert rows["a"]["precision"] == pytest.approx(1 / 3) and rows["a"]["recall"] == pytest.approx(1 / 2)
    assert rows["a"]["f1"] == pytest.approx(0.4) and rows["a"]["support"] == 2
    # b: predicted twice, both right; 3 references -> P 1, R 2/3, F1 0.8
    assert rows["b"]["precision"] == 1.0 and rows["b"]["recall"] == pytest.approx(2 / 3) and rows["b"]["f1"] == pytest.approx(0.8)
    # c: predicted once, wrong; 1 reference -> all 0
    assert rows["c"]["f1"] == 0.0 and list(rows) == ["b", "a", "c"]  # by support
    metrics = M.label_metrics(pred + ["zzz"], ref + ["a"], ["a", "b", "c"])
    assert metrics["invalid_labels"] == 1 and metrics["accuracy"] == pytest.approx(3 / 7)
    assert metrics["confusions"][0] == {"reference": "a", "predicted": "c", "count": 1}  # ties by name


def _case(user: str, answer: str) -> EvalCase:
    return EvalCase([{"role": "user", "content": user}], answer, "t.jsonl:1")


def test_run_classical_on_label_answers_and_json_label_fields() -> None:
    train = [_case("refund please", "refund"), _case("my refund now", "refund"), _case("card lost", "card_lost"),
             _case("lost my card", "card_lost")]
    test = [_case("refund for me", "refund"), _case("the card is lost", "card_lost")]
    kind = M.detect_kind([c.reference for c in train + test])
    res = run_classical(train, test, kind)
    assert res.predictions == ["refund", "card_lost"] and res.correct == [True, True]
    assert res.scores["accuracy"] == 1.0 and res.train_examples == 4
    as_json = [_case(c.messages[0]["content"], '{"intent": "%s", "reply": "ok %d"}' % (c.reference, i))
               for i, c in enumerate(train + test)]
    kind = M.detect_kind([c.reference for c in as_json])
    assert kind.label_field == "intent"
    assert run_classical(as_json[:4], as_json[4:], kind).predictions == ["refund", "card_lost"]
