"""The prompted baseline: inferred system prompt and diverse few-shot turns."""

from __future__ import annotations

import json

from tunecraft.eval.baselines import build_prompt, describe_task, pick_shots
from tunecraft.eval.cases import EvalCase
from tunecraft.eval.metrics import detect_kind, read_label


def _cases() -> list[EvalCase]:
    out = []
    for i in range(24):
        intent = ["refund", "card_lost", "login"][i % 3]
        prio = {"refund": "normal", "card_lost": "urgent", "login": "low"}[intent]
        ans = json.dumps({"intent": intent, "priority": prio, "reply": f"we will help with case {i}"})
        out.append(EvalCase([{"role": "user", "content": f"message {i} about {intent}"}], ans, f"t.jsonl:{i + 1}"))
    return out


def test_system_prompt_states_keys_and_label_sets() -> None:
    cases = _cases()
    kind = detect_kind([c.reference for c in cases])
    text = describe_task([c.reference for c in cases], kind)
    assert '"intent", "priority", "reply"' in text
    assert '"refund"' in text and '"urgent"' in text and '"reply": text' in text


def test_shots_cover_different_labels_and_are_seeded() -> None:
    cases = _cases()
    kind = detect_kind([c.reference for c in cases])
    shots = pick_shots(cases, kind, 3, seed=1)
    assert len({read_label(s.reference, kind) for s in shots}) == 3
    assert [s.where for s in shots] == [s.where for s in pick_shots(cases, kind, 3, seed=1)]
    assert pick_shots(cases, kind, 0) == []


def test_conversation_layout_and_prompt_file() -> None:
    cases = _cases()
    kind = detect_kind([c.reference for c in cases])
    spec = build_prompt(cases, kind, 2)
    test = EvalCase([{"role": "system", "content": "Own."}, {"role": "user", "content": "hi"}], "{}", "x:1")
    conv = spec.conversation(test)
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert conv[0]["content"].endswith("Own.") and conv[-1]["content"] == "hi"
    custom = build_prompt(cases, kind, 1, prompt_file_text="  Be terse.\n", prompt_file="p.txt")
    assert custom.system == "Be terse." and custom.source == "p.txt" and len(custom.shots) == 1
