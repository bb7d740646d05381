"""Extending a finished run (`train --resume --out RUN --epochs N`): it continues from its weights
with a new schedule segment recorded in events.jsonl; other settings cannot change on resume."""

from __future__ import annotations

import math

import pytest

from tunecraft import rundir
from tunecraft.curves import run_verdict
from tunecraft.errors import ConfigError
from tunecraft.train.entry import resolve_config
from tunecraft.train.loop import build, train
from tunecraft.train.optim import lr_factor


def _rows(run, kind: str = "train") -> list[dict]:
    return [r for r in rundir.read_metrics(run) if r.get("type") == kind]


def test_a_finished_run_extends_with_a_new_schedule_segment(make_cfg) -> None:
    cfg = make_cfg(**{"train.epochs": 1, "train.deterministic": True, "train.threads": 1, "train.lr": 3e-3})
    first = train(*build(cfg))
    n = first.summary["steps"]
    run = first.run_dir
    before = _rows(run)
    assert first.status == "finished" and len(before) == n

    again = resolve_config([], {"train.out": str(run), "train.epochs": 3.0}, resume=True)
    plan, rt = build(again, resume=True)
    assert plan.total_steps == 3 * n
    result = train(plan, rt, resume=True)
    assert result.status == "finished" and result.summary["steps"] == 3 * n

    events = rundir.read_events(run)
    resumed = [e for e in events if e["event"] == "resume"]
    assert resumed and resumed[-1]["message"] == f"resumed from step-{n:06d}"  # from its weights
    segment = [e for e in events if e["event"] == "segment"]
    assert len(segment) == 1 and (segment[0]["start"], segment[0]["end"]) == (n, 3 * n)

    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(1, 3 * n + 1))
    assert rows[:n] == before  # the first segment's record is kept as it was
    s = plan.settings
    new = 2 * n
    for r in rows[n:]:
        k = r["step"] - 1 - n
        assert math.isclose(r["lr"], s.lr * lr_factor(k, new, round(s.warmup_ratio * new), s.schedule), rel_tol=1e-12)
    assert rows[-1]["lr"] < rows[n]["lr"] or new == 1  # it decays again to the new end
    # It continued from the trained weights: the first new step's loss is near where the run
    # ended, far below where it began.
    assert rows[n]["loss"] < rows[0]["loss"] - 0.5 * (rows[0]["loss"] - before[-1]["loss"])


def test_resume_refuses_to_change_what_the_run_learns(make_cfg) -> None:
    first = train(*build(make_cfg(**{"train.max_steps": 2})))
    with pytest.raises(ConfigError, match="train.lr cannot change"):
        resolve_config([], {"train.out": str(first.run_dir), "train.lr": 0.5}, resume=True)
    same = resolve_config([], {"train.out": str(first.run_dir), "train.lr": 1e-3}, resume=True)
    assert same.train.lr == 1e-3  # the recorded value, given again: fine


def test_an_underfitting_verdict_says_how_to_continue(make_cfg) -> None:
    result = train(*build(make_cfg(**{"train.max_steps": 4, "train.eval_every": 1, "train.lr": 1e-4})))
    verdict = run_verdict(result.run_dir)
    assert verdict.status == "underfitting"
    assert any(f"tunecraft train --resume --out {result.run_dir} --epochs" in s for s in verdict.suggestions)
