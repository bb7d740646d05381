"""Task metrics against hand-computed values."""

from __future__ import annotations

import json

import pytest

from tunecraft.eval import metrics as M


def test_normalize_and_exact_match() -> None:
    assert M.normalize("  The Card, has   ARRIVED! ") == "card has arrived"
    assert M.exact_match("The card has arrived.", "card has arrived") == 1.0
    assert M.exact_match("card arrived", "card has arrived") == 0.0


def test_token_f1_hand_computed() -> None:
    # pred tokens: [card, has, arrived, today]; ref: [card, arrived]; overlap 2
    # precision 2/4, recall 2/2 -> F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert M.token_f1("the card has arrived today", "card arrived") == pytest.approx(2 / 3)
    # repeated tokens count as a multiset: pred [a1, a1, b], ref [a1, b, b] -> overlap 2 -> P=R=2/3
    assert M.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert M.token_f1("", "") == 1.0
    assert M.token_f1("something", "") == 0.0
    assert M.token_f1("abc", "xyz") == 0.0


def test_rouge_l_hand_computed() -> None:
    rouge = M.RougeL()
    # LCS of "a b c d" (ref) and "a c d e" (pred) is "a c d" = 3; P = 3/4, R = 3/4, F = 0.75
    assert rouge("a c d e", "a b c d") == pytest.approx(0.75)
    assert rouge("same words here", "same words here") == pytest.approx(1.0)
    assert rouge("nothing", "shared") == 0.0


def test_accuracy_macro_f1_and_confusions_hand_computed() -> None:
    ref = ["a", "a", "a", "b", "b", "c"]
    pred = ["a", "a", "b", "b", "c", "c"]
    assert M.accuracy(pred, ref) == pytest.approx(4 / 6)
    # a: tp2 fp0 fn1 -> 4/5; b: tp1 fp1 fn1 -> 2/4; c: tp1 fp1 fn0 -> 2/3
    assert M.macro_f1(pred, ref) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert M.confusions(pred, ref) == [
        {"reference": "a", "predicted": "b", "count": 1},
        {"reference": "b", "predicted": "c", "count": 1},
    ]
    # a label only ever predicted (never a reference) is not averaged in
    assert M.macro_f1(["zzz", "b"], ["a", "b"]) == pytest.approx((0 + 1) / 2)


def _answer(intent: str, priority: str, reply: str) -> str:
    return json.dumps({"intent": intent, "priority": priority, "reply": reply})


def test_detect_kind_json_picks_the_richest_closed_field() -> None:
    intents = ["card_lost", "refund", "atm", "pin", "login"]
    prio = {"card_lost": "urgent", "refund": "normal", "atm": "high", "pin": "normal", "login": "low"}
    answers = [_answer(i, prio[i], f"reply number {n} for {i}") for n in range(4) for i in intents]
    kind = M.detect_kind(answers)
    assert kind.kind == "json" and kind.label_field == "intent"
    assert kind.labels == tuple(sorted(intents))
    assert kind.json_keys == ("intent", "priority", "reply")
    assert M.main_metric(kind) == "accuracy"


def test_detect_kind_labels_and_text() -> None:
    labels = ["positive", "negative", "neutral"] * 4
    assert M.detect_kind(labels).kind == "label"
    free = [f"a long free text answer number {i} with many words" for i in range(12)]
    kind = M.detect_kind(free)
    assert kind.kind == "text" and not kind.has_labels and M.main_metric(kind) == "token_f1"
    # JSON whose only fields are unique values: JSON, but no label field
    ids = [json.dumps({"id": i}) for i in range(10)]
    assert M.detect_kind(ids) == M.AnswerKind("json", json_keys=("id",))


def test_read_label_is_lenient_and_valid_json_is_strict() -> None:
    kind = M.AnswerKind("json", "intent", ("a", "b"), ("intent",))
    assert M.read_label('{"intent": "a"}', kind) == "a"
    fenced = '```json\n{"intent": "b"}\n```'
    assert M.read_label(fenced, kind) == "b"
    assert M.read_label('broken {"intent": "a", "reply": "unterminated', kind) == "a"
    assert M.read_label("no idea", kind) == M.NO_LABEL
    rouge = M.RougeL()
    assert M.score_example(fenced, '{"intent": "b"}', kind, rouge).valid_json is False
    s = M.score_example('{"intent": "b"}', '{"intent": "b"}', kind, rouge)
    assert s.valid_json and s.correct and s.exact_match == 1.0


def test_aggregate_json_with_labels() -> None:
    kind = M.AnswerKind("json", "intent", ("a", "b"), ("intent", "reply"))
    rouge = M.RougeL()
    refs = ['{"intent": "a", "reply": "x y"}', '{"intent": "b", "reply": "z"}']
    preds = ['{"intent": "a", "reply": "x y"}', 'I think it is {"intent": "a"}']
    scores = [M.score_example(p, r, kind, rouge) for p, r in zip(preds, refs)]
    agg = M.aggregate(scores, kind)
    assert agg.valid_json_rate == 0.5 and agg.accuracy == 0.5 and agg.exact_match == 0.5
    # a: tp1 fp1 fn0 -> 2/3; b: tp0 -> 0
    assert agg.macro_f1 == pytest.approx(1 / 3)
    assert agg.confusions == [{"reference": "b", "predicted": "a", "count": 1}]
    assert M.per_example_main(scores, kind) == [1.0, 0.0]
