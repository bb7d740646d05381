"""The schedule's segments and the time budget's refit: a run whose steps run slower (or faster)
than its warm-up measured moves its decay's end to where the budget runs out, continuously."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tunecraft import rundir
from tunecraft.train import schedule
from tunecraft.train.loop import train
from tunecraft.train.plan import TrainSettings, make_plan
from tunecraft.train.runtime import setup_runtime
from tunecraft.train.schedule import REFIT_MIN_STEPS, Budget


@pytest.fixture
def settings(make_cfg) -> TrainSettings:
    s = make_plan(make_cfg()).settings
    return dataclasses.replace(s, warmup_ratio=0.1, schedule="cosine", eval_every=10, save_every=None,
                               save_interval_s=600.0, batch_size=8)


def test_a_refit_continues_the_decay_and_ends_it_at_the_new_end(settings: TrainSettings) -> None:
    segments: list[list[float]] = [[0, 1000]]
    before = [schedule.factor(segments, k, settings) for k in range(500)]
    segments.append(schedule.refit(segments, 500, 700, settings))
    after = [schedule.factor(segments, k, settings) for k in range(500, 700)]
    step_change = max(abs(a - b) for a, b in zip(before[101:], before[102:]))
    assert abs(after[0] - before[-1]) <= 2 * step_change  # no jump in the LR at the refit
    assert all(a > b for a, b in zip(after, after[1:]))  # still decaying
    assert after[-1] < 1e-3 < after[0]  # the decay ends at the new end, not at step 1000
    assert schedule.factor(segments, 300, settings) == before[300]  # the steps before are as they were
    assert schedule.progress(segments, 699, settings) == pytest.approx(1.0, abs=0.01)


def test_warmup_has_no_decay_progress(settings: TrainSettings) -> None:
    segments: list[list[float]] = [[0, 1000]]
    assert schedule.progress(segments, 50, settings) is None  # 100 warmup steps
    assert schedule.progress(segments, 100, settings) == 0.0
    assert schedule.progress(segments, 550, settings) == pytest.approx(0.5)


def _budget(settings: TrainSettings, limit_s: float, max_end: int) -> Budget:
    # No evaluation and no checkpoint cost: the arithmetic is the step time alone.
    return Budget(limit_s, n_eval=0, n_val=0, state_bytes=0, s=settings, max_end=max_end)


def test_slow_steps_bring_the_end_nearer(settings: TrainSettings) -> None:
    budget = _budget(settings, limit_s=200.0, max_end=200)
    for k in range(REFIT_MIN_STEPS - 1):
        budget.stepped(2.0)
        assert budget.refit(k + 1, 200, 2.0 * (k + 1)) is None  # not measured long enough yet
    budget.stepped(2.0)
    got = budget.refit(REFIT_MIN_STEPS, 200, 2.0 * REFIT_MIN_STEPS)
    assert got is not None and got.step_s == pytest.approx(2.0)
    left = 200.0 - 2.0 * REFIT_MIN_STEPS  # 100 s left at 2 s a step: 50 steps, 49 of them planned
    assert got.end == REFIT_MIN_STEPS + int(0.98 * left // 2.0)
    budget.stepped(2.0)
    assert budget.refit(REFIT_MIN_STEPS + 1, got.end, 2.0 * (REFIT_MIN_STEPS + 1)) is None  # not again at once


def test_steps_on_plan_leave_the_schedule_alone(settings: TrainSettings) -> None:
    budget = _budget(settings, limit_s=200.0, max_end=196)
    for _ in range(REFIT_MIN_STEPS):
        budget.stepped(1.0)
    assert budget.refit(REFIT_MIN_STEPS, 196, float(REFIT_MIN_STEPS)) is None  # 2% margin: within tolerance


def test_fast_steps_give_back_steps_up_to_the_plan(settings: TrainSettings) -> None:
    budget = _budget(settings, limit_s=200.0, max_end=150)
    for _ in range(REFIT_MIN_STEPS):
        budget.stepped(0.5)
    got = budget.refit(REFIT_MIN_STEPS, 100, 25.0)  # an earlier refit had brought the end to 100
    assert got is not None and got.end == 150  # never past the plan's steps


def test_the_stop_guard_counts_the_last_evaluation_and_checkpoint(settings: TrainSettings) -> None:
    budget = Budget(100.0, n_eval=10, n_val=20, state_bytes=0, s=settings, max_end=100)
    budget.evaluated(5.0, 10)  # 0.5 s per validation example: the tail is 15 s
    assert not budget.out_of_time(elapsed_s=84.0, step_s=0.9)
    assert budget.out_of_time(elapsed_s=84.5, step_s=0.9)


def test_a_slowed_run_refits_and_ends_its_decay_inside_the_budget(make_cfg) -> None:
    """A real run whose budget holds far fewer steps than its plan (the plan was not fitted, as if
    every step ran much slower than a warm-up said): the budget refits the schedule once it has
    measured the steps, the run ends at the new end with the LR decayed, and config.yaml records
    the new length so that a resume replays it."""
    cfg = make_cfg(**{"train.epochs": 2000, "train.time_budget": 8.0, "train.eval_every": 50,
                      "train.warmup_ratio": 0.0})
    plan = make_plan(cfg)  # asks for 14,000 steps
    s = plan.settings
    result = train(plan, setup_runtime(s.precision, s.deterministic, s.threads, s.sharding))
    refits = [e for e in rundir.read_events(plan.run_dir) if e["event"] == "refit"]
    assert refits and refits[0]["old_end"] == plan.total_steps and refits[0]["end"] < plan.total_steps
    end = refits[-1]["end"]
    assert "decay ends inside the budget" in refits[0]["message"]
    steps = [r for r in rundir.read_metrics(plan.run_dir) if r.get("type") == "train"]
    assert result.summary["total_steps"] == end
    if result.summary["steps"] == end:  # ended by its schedule (a very slow moment may stop it sooner)
        assert steps[-1]["lr"] < 0.05 * s.lr
        assert "time budget reached" not in result.summary["message"]
    assert rundir.read_config(plan.run_dir).train.max_steps == end
    checkpoint = rundir.complete_checkpoints(plan.run_dir)[-1]
    state = json.loads((Path(checkpoint) / "state.json").read_text())
    assert state["segments"][-1][:2] == [refits[-1]["start"], end]


def test_a_pessimistic_warm_up_does_not_cap_the_run(make_cfg) -> None:
    """A warm-up measured while the machine was busy for a moment (here: said 0.1 s a step, the
    steps then take milliseconds) planned fewer steps than the budget holds: the refit grows the
    schedule back towards the epochs auto would train for, never past them."""
    from tunecraft.train.plan import Warmup, fit_budget

    cfg = make_cfg(**{"train.epochs": None, "train.time_budget": 8.0, "train.batch_size": 2,
                      "train.micro_batch_size": 2, "train.eval_every": 20, "train.warmup_ratio": 0.0})
    plan = fit_budget(cfg, make_plan(cfg), Warmup(step_s=0.1, load_s=0.0, state_bytes=0, spent_s=0.0))
    assert plan.total_steps < plan.step_limit  # the 5-epoch cap the budget may grow to
    s = plan.settings
    result = train(plan, setup_runtime(s.precision, s.deterministic, s.threads, s.sharding))
    refits = [e for e in rundir.read_events(plan.run_dir) if e["event"] == "refit"]
    assert refits and refits[0]["old_end"] == plan.total_steps and refits[0]["end"] > plan.total_steps
    assert max(e["end"] for e in refits) <= plan.step_limit
    assert result.summary["steps"] > plan.total_steps
    assert rundir.read_config(plan.run_dir).train.max_steps == refits[-1]["end"]
