"""Closed label sets and the reject threshold (tunecraft.labels): detection and calibration by hand."""

from __future__ import annotations

import pytest

from tunecraft.labels import LabelSet, calibrate, decide, detect_label_set, rejection_point


def test_a_closed_set_of_repeated_short_answers_is_a_label_set() -> None:
    answers = ["refund", "balance", " refund ", "balance", "card_arrival", "card_arrival"]
    labels = detect_label_set(answers)
    assert labels is not None and labels.labels == ("balance", "card_arrival", "refund")
    assert labels.counts == {"refund": 2, "balance": 2, "card_arrival": 2} and labels.reject_label is None


@pytest.mark.parametrize("answers", [
    ["a long free text answer that goes on and on", "another long free text answer with many words"] * 3,
    [f"answer {i}" for i in range(20)],  # never repeated: ids, names
    ["only"] * 5,  # one value is no choice
])
def test_free_text_is_no_label_set(answers: list[str]) -> None:
    assert detect_label_set(answers) is None


def test_the_reject_label_by_name_or_by_config() -> None:
    answers = ["refund", "Out-of-Scope", "refund", "Out-of-Scope", "balance", "balance"]
    by_name = detect_label_set(answers)
    assert by_name is not None and by_name.reject_label == "Out-of-Scope" and by_name.reject_source == "name"
    configured = detect_label_set(["refund", "balance"] * 2, reject_label="none_of_these")
    assert configured is not None and configured.reject_label == "none_of_these"
    assert "none_of_these" in configured.labels  # joins the set: only the threshold will produce it


def test_decide_and_a_rejection_point_by_hand() -> None:
    assert decide("refund", 0.4, 0.5, "oos") == "oos" and decide("refund", 0.6, 0.5, "oos") == "refund"
    assert decide("refund", 0.1, 0.5, None) == "refund"
    pred = ["a", "a", "b", "b", "a"]
    conf = [0.9, 0.4, 0.8, 0.3, 0.2]
    ref = ["a", "b", "b", "oos", "oos"]
    point = rejection_point(pred, conf, ref, "oos", 0.35)
    # final: a, a, b, oos, oos -> in scope 2 of 3 right; reject 2 of 2; 2 of 5 rejected
    assert point.in_scope_accuracy == pytest.approx(2 / 3)
    assert point.reject_recall == 1.0 and point.rejected_share == pytest.approx(0.4)


def test_calibration_takes_the_best_recall_within_one_point_of_in_scope_accuracy() -> None:
    # 100 in-scope answers (90 right, the 10 wrong ones unsure) and 10 reject examples, all unsure.
    pred = ["a"] * 90 + ["b"] * 10 + ["a"] * 10
    conf = [0.95] * 80 + [0.5] * 10 + [0.45] * 10 + [0.4] * 10
    ref = ["a"] * 90 + ["c"] * 10 + ["oos"] * 10
    cal = calibrate(pred, conf, ref, "oos")
    # Rejecting below 0.5 catches every reject example and loses no right answer; rejecting the
    # 0.5 group would cost 10 points: so 0.5 (the highest threshold with full recall and no cost).
    assert cal.threshold == 0.5
    assert cal.chosen.reject_recall == 1.0 and cal.chosen.in_scope_accuracy == pytest.approx(0.9)
    assert cal.without.reject_recall == 0.0 and cal.split == "validation"
    assert "10 reject examples" in cal.reason
    assert any(p.threshold == 0.5 for p in cal.curve)


def test_calibration_without_reject_examples_spends_the_in_scope_budget() -> None:
    pred = ["a"] * 200
    conf = [0.9] * 198 + [0.3, 0.2]
    ref = ["a"] * 198 + ["b", "a"]  # rejecting the two unsure answers loses 1 right one of 200 (0.5 point)
    cal = calibrate(pred, conf, ref, "oos")
    # Every threshold from 0.3 to 0.9 costs the same 0.5 point: the highest is taken (just under
    # the sure answers), so that unfamiliar inputs the model is unsure of are rejected.
    assert cal.threshold == 0.9 and cal.chosen.in_scope_accuracy == pytest.approx(198 / 200)
    assert calibrate(pred, conf, ref, "oos", tolerance=0.001).threshold == 0.2  # a 0.1-point budget: only the wrong one
    assert cal.reject_examples == 0 and "no validation example" in cal.reason


def test_label_set_json_round_trip_and_checks() -> None:
    labels = detect_label_set(["x", "y", "oos"] * 2, reject_label="oos")
    assert labels is not None
    cal = calibrate(["x", "y"], [0.9, 0.2], ["x", "oos"], "oos")
    again = LabelSet.from_json(labels.with_calibration(cal).to_json())
    assert again == labels.with_calibration(cal) and again.threshold == cal.threshold
    with pytest.raises(ValueError, match="reject_label"):
        LabelSet.from_json({"labels": ["x", "y"], "reject_label": "z"})
    with pytest.raises(ValueError, match="at least two"):
        LabelSet.from_json({"labels": ["x"]})
