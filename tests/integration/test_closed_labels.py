"""A closed-label run end to end on a tiny model: train records the label set and calibrates the
reject threshold on validation; eval answers constrained with the classical baseline and the
rejection curves; a served model answers the official `openai` client with labels only."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from rich.console import Console

from processes import LoopbackServer
from tunecraft import rundir
from tunecraft.eval.cases import load_cases
from tunecraft.labels import calibrate
from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import classify, load_target
from tunecraft.serve.server import load_targets

WORDS = {"refund": "money back refund", "card_arrival": "card arrive delivery", "balance": "how much balance",
         "out_of_scope": "weather tomorrow song"}
LABELS = sorted(WORDS)


def _write(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            label = rng.choice(LABELS)
            user = f"{rng.choice(['hi', 'hello'])} {WORDS[label]} {rng.randrange(50)}"
            row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": label}]}
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunecraft.train.entry import run_train

    root = tmp_path_factory.mktemp("labels-run")
    values = {"model.name": str(tiny_model_dir), "data.train": str(_write(root / "train.jsonl", 80, 1)),
              "data.val": str(_write(root / "val.jsonl", 24, 2)), "train.out": str(root / "run"),
              "train.method": "lora", "train.epochs": 2, "train.lr": 1e-2, "train.precision": "fp32"}
    assert run_train([], values, False, False, Console(quiet=True)) == 0
    _write(root / "test.jsonl", 20, 3)
    return root / "run"


def test_training_records_the_label_set_and_calibrates_on_validation_only(run: Path) -> None:
    labels = rundir.read_labels(run)
    assert labels is not None and list(labels.labels) == LABELS and labels.reject_label == "out_of_scope"
    cal = labels.calibration
    assert cal is not None and cal.split == "validation" and cal.examples == 24
    # Recompute from the validation file alone: the same answers give the same threshold and curve.
    lm = load_target(str(run))
    val = load_cases(run.parent / "val.jsonl")
    answers = classify(lm, [lm.chat_prompt(c.messages) for c in val], reject=False)
    again = calibrate([a.model_label for a in answers], [a.confidence for a in answers],
                      [c.reference for c in val], "out_of_scope")
    assert again.threshold == pytest.approx(cal.threshold, abs=1e-6) and again.curve == cal.curve
    assert [e["event"] for e in rundir.read_events(run)][-2:] == ["labels", "calibrated"]


def test_eval_constrains_answers_and_adds_the_classical_baseline(run: Path) -> None:
    from tunecraft.eval.evaluate import evaluate_run, options_for

    test = run.parent / "test.jsonl"
    payload = evaluate_run(run, options_for(run, test))
    assert payload["labels"]["constrained"] and set(payload["labels"]["invalid_labels"].values()) == {0}
    assert all(s["constrained"] for s in payload["systems"].values())
    assert all(a in LABELS for case in payload["cases"] for a in case["answers"].values())
    classical = payload["classical"]
    assert classical["name"] == "tfidf+logreg" and classical["train_examples"] == 80
    assert {r["label"] for r in classical["metrics"]["per_label"]} <= set(LABELS)
    assert payload["systems"]["tuned"]["metrics"]["per_label"]
    reject = payload["reject"]
    threshold = rundir.read_labels(run).threshold
    assert reject["threshold"] == threshold and reject["chosen_on"] == "validation"
    assert any(p["threshold"] == round(threshold, 6) for p in reject["test"]["curve"])
    assert payload["general"]["prompts"] > 20 and isinstance(payload["general"]["kept"], bool)
    # the threshold did not move: eval reads it, never re-chooses it on test
    assert rundir.read_labels(run).threshold == threshold
    html = (run / "report" / "index.html").read_text()
    assert "TF-IDF + logistic regression" in html and "General abilities" in html and "Chosen on the validation split" in html
    free = evaluate_run(run, options_for(run, test, baselines=[], label_constraint=False, general=False, report=False))
    assert not free["systems"]["tuned"]["constrained"] and free["reject"] is None and free["general"] is None


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[openai.OpenAI]:
    srv = LoopbackServer(create_app(load_targets([str(run)]), ServeSettings()))
    yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)
    srv.stop()


def test_served_closed_label_model_answers_the_openai_client_with_labels_only(client: openai.OpenAI, run: Path) -> None:
    model = client.models.list().data[0]
    info = model.model_extra["labels"]
    assert info["labels"] == LABELS and info["reject_label"] == "out_of_scope"
    for i, text in enumerate(["hello money back refund 3", "what is the weather", "hi card arrive delivery 9",
                              "anything at all", "tell me a story about a dragon"]):
        reply = client.chat.completions.create(model=model.id, messages=[{"role": "user", "content": text}],
                                               temperature=1.5 if i % 2 else 0, seed=i, logprobs=True, top_logprobs=2)
        choice = reply.choices[0]
        assert choice.message.content in LABELS and choice.finish_reason == "stop"
        label = choice.model_extra["label"]
        assert label["label"] == choice.message.content and sum(label["probs"].values()) == pytest.approx(1.0)
        tokens = choice.logprobs.content
        assert "".join(t.token for t in tokens) == choice.message.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in tokens)


def test_served_requests_can_turn_the_constraint_off_and_stream(client: openai.OpenAI, run: Path) -> None:
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "hello money back refund 3"}]
    free = client.chat.completions.create(model=model, messages=messages, max_tokens=5,
                                          extra_body={"label_constraint": False})
    assert "label" not in (free.choices[0].model_extra or {})
    parts = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text in LABELS and parts[-1].choices[0].model_extra["label"]["label"] == text
    own = client.chat.completions.create(model=model, messages=messages, extra_body={"label_reject": False})
    label = own.choices[0].model_extra["label"]
    assert not label["rejected"] and label["threshold"] == 0.0 and own.choices[0].message.content == label["model_label"]
