"""The time budget: the plan fits the run into it from a measured warm-up, and the loop stops on
a step boundary within one step of the limit, with a checkpoint that resumes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunecraft import rundir
from tunecraft.config import parse_duration
from tunecraft.errors import ConfigError
from tunecraft.train import auto
from tunecraft.train.loop import build, train
from tunecraft.train.plan import BUDGET_MAX_EPOCHS, Warmup, fit_budget, make_plan
from tunecraft.train.runtime import setup_runtime


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400),
                                            ("1800", 1800), ("2 h", 7200)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "m30"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_budget_fits_the_steps_it_can_afford(make_cfg) -> None:
    cfg = make_cfg(**{"train.epochs": None, "train.time_budget": 100.0})
    plan = make_plan(cfg)
    warm = Warmup(step_s=3.0, load_s=2.0, state_bytes=0, spent_s=5.0)
    fitted = fit_budget(cfg, plan, warm)
    # 100 s - 5 spent - 2 load - 3% margin, at 3 * 1.05 s per step: validation (its evaluations
    # and the full pass at the end) takes 5% of the steps' time, which covers its least here.
    expected = int((100 - 5 - 2 - 3) // 3.15)
    least = auto.validation_cost(len(plan.val), auto.EVAL_MIN_COUNT, len(plan.val)) * 3.0 / 8 / 3
    assert least <= 0.05 * expected * 3.0
    assert 0 < fitted.total_steps == expected < plan.total_steps * BUDGET_MAX_EPOCHS
    assert fitted.settings.epochs == pytest.approx(expected / 8, abs=1e-4)  # 58 examples, 8 per step
    assert fitted.config.train.max_steps == expected  # resume replays the same schedule length
    reasons = {c.field: c.reason for c in fitted.choices}
    assert "time budget of 100 s" in reasons["train.max_steps"]
    assert fitted.settings.eval_every == auto.choose_eval_every(expected, expected * 8, len(plan.val)).value
    assert [c.field for c in fitted.choices].count("train.eval_every") == 1


def test_a_validation_set_too_dear_for_its_share_is_paid_from_the_budget(make_cfg) -> None:
    """A validation set two thirds the size of the training set: its full pass alone costs more than the
    5% share, so the plan sets its least cost (the full pass and 3 evaluations) aside first."""
    cfg = make_cfg(**{"train.epochs": None, "train.time_budget": 60.0, "data.val_fraction": 0.4})
    plan = make_plan(cfg)
    n_val = len(plan.val)
    assert n_val >= 8
    fitted = fit_budget(cfg, plan, Warmup(step_s=3.0, load_s=0.0, state_bytes=0, spent_s=0.0))
    least = auto.validation_cost(n_val, auto.EVAL_MIN_COUNT, min(n_val, auto.EVAL_MIN_EXAMPLES)) * 3.0 / 8 / 3
    assert least > 0.05 * fitted.total_steps * 3.0
    assert fitted.total_steps == int((60 - 1.8 - least) // 3.0)  # 3% margin
    assert f"the full pass over {n_val} examples" in {c.field: c.reason for c in fitted.choices}["train.max_steps"]


def test_budget_caps_epochs_on_small_data(make_cfg) -> None:
    cfg = make_cfg(**{"train.epochs": None, "train.time_budget": 10_000.0})
    plan = make_plan(cfg)
    fitted = fit_budget(cfg, plan, Warmup(0.01, 0.0, 0, 0.0))
    assert fitted.settings.epochs == BUDGET_MAX_EPOCHS
    assert "the most auto trains for" in {c.field: c.reason for c in fitted.choices}["train.max_steps"]


def test_budget_only_caps_what_the_user_set(make_cfg) -> None:
    cfg = make_cfg(**{"train.epochs": 50, "train.time_budget": 30.0})
    plan = make_plan(cfg)
    fitted = fit_budget(cfg, plan, Warmup(1.0, 0.0, 0, 0.0))
    assert fitted.total_steps < plan.total_steps == 400  # 50 epochs of 8 steps
    assert fitted.settings.epochs == 50  # as given; the step count caps it
    assert f"{fitted.total_steps} of 400 steps fit" in {c.field: c.reason for c in fitted.choices}["train.max_steps"]


def test_a_budget_too_small_for_one_step_is_refused(make_cfg) -> None:
    cfg = make_cfg(**{"train.time_budget": 3.0})
    with pytest.raises(ConfigError, match="does not fit one optimizer step"):
        fit_budget(cfg, make_plan(cfg), Warmup(2.0, 1.0, 0, 1.0))


def test_build_measures_a_warm_up_and_fits(make_cfg) -> None:
    plan, _ = build(make_cfg(**{"train.epochs": None, "train.time_budget": 60.0}))
    assert "warmup_s" in plan.timings
    assert plan.config.train.max_steps == plan.total_steps
    assert any(c.field == "train.max_steps" and "median of a warm-up" in c.reason for c in plan.choices)


def test_a_measured_evaluation_cost_sizes_the_validation_subsample() -> None:
    """What an evaluated example costs is measured in the warm-up: the dearer it is, the fewer
    validation examples fit validation's 5% share (the evaluations and the full pass at the end)."""
    cheap, dear = Warmup(1.6, 0.0, 0, 0.0, eval_s=0.02), Warmup(1.6, 0.0, 0, 0.0, eval_s=0.05)
    assert cheap.forward_share(16) == pytest.approx(0.2) and dear.forward_share(16) == pytest.approx(0.5)
    assert Warmup(1.6, 0.0, 0, 0.0).forward_share(16) == auto.FORWARD_SHARE  # not measured: the rule of thumb
    few = auto.choose_eval_examples(2000, 50_000, 10, dear.forward_share(16))
    many = auto.choose_eval_examples(2000, 50_000, 10, cheap.forward_share(16))
    # 5% of 50,000 trained examples' compute: 5,000 (dear) or 12,500 (cheap) evaluated examples,
    # less the full pass's 2,000, over the 9 evaluations before the last (which merges into it).
    assert few.value == 333 and many.value == 1166
    assert "measured at 0.50 of a trained one" in few.reason


def test_the_loop_stops_within_one_step_of_the_limit(make_cfg, tmp_path: Path) -> None:
    """A plan whose step count far exceeds the budget (not fitted): the loop itself must stop."""
    cfg = make_cfg(**{"train.epochs": 2000, "train.time_budget": 4.0, "train.eval_every": 50})
    plan = make_plan(cfg)  # no warm-up fit: the plan asks for 14,000 steps
    s = plan.settings
    rt = setup_runtime(s.precision, s.deterministic, s.threads, s.sharding)
    t0 = time.perf_counter()
    result = train(plan, rt)
    took = time.perf_counter() - t0
    steps = [r for r in rundir.read_metrics(plan.run_dir) if r.get("type") == "train"]
    step_s = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:]))
    startup = sum(result.summary["startup_s"].values())
    assert result.status == "finished" and 0 < result.summary["steps"] < plan.total_steps
    assert "time budget reached" in result.summary["message"]
    assert startup + result.summary["wall_s"] <= 4.0 + step_s + 0.5  # the final eval/checkpoint are small here
    assert took < 4.0 + 3.0
    events = [e["event"] for e in rundir.read_events(plan.run_dir)]
    assert "time_budget" in events
    last = rundir.complete_checkpoints(plan.run_dir)[-1]
    assert rundir.checkpoint_step(last) == result.summary["steps"]  # the stop wrote a checkpoint
    # The checkpoint resumes: the run continues past the stop (here for 2 more steps).
    more = make_plan(make_cfg(**{"train.epochs": 2000, "train.max_steps": result.summary["steps"] + 2,
                                 "train.eval_every": 50}))
    resumed = train(more, rt, resume=True)
    assert resumed.summary["steps"] == result.summary["steps"] + 2


def test_cli_time_budget_run_ends_inside_it(tiny_model_dir: Path, chat_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunecraft", "train", "--model", str(tiny_model_dir), "--data",
                    str(chat_data), "--out", str(out), "--time-budget", "25s", "train.precision=fp32",
                    "train.epochs=400"], check=True, capture_output=True, text=True)
    took = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    steps = [r for r in rundir.read_metrics(out) if r.get("type") == "train"]
    step_s = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:]))
    assert summary["time_budget_s"] == 25.0
    # Within one step of the budget (the machine is shared: a step may take longer than measured).
    assert sum(summary["startup_s"].values()) + summary["wall_s"] <= 25.0 + step_s
    assert took < 25.0 + 20  # the interpreter's imports come on top of the budget
    assert summary["steps"] >= 10  # the budget was used, not wasted


def test_a_long_raw_text_document_trains_as_windows(make_cfg, tmp_path) -> None:
    """A raw-text file whose documents exceed max_length plans windows (stated, with the overlap),
    trains on them, and a short document stays one example."""
    import json

    from runs import train_config
    from tunecraft.data.prepare import window_count
    from tunecraft.train.plan import make_plan

    path = tmp_path / "docs.jsonl"
    docs = [" ".join(f"tok{i % 97}" for i in range(n)) for n in (300, 20, 250, 10)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    cfg = make_cfg(**{"data.train": str(path), "data.val": str(path), "data.max_length": 48,
                      "train.batch_size": 2, "train.micro_batch_size": 2, "train.max_steps": 2})
    plan = make_plan(cfg)
    lengths = [len(t.input_ids) for t in plan.data.train]
    overlap = 48 // 8
    assert plan.config.data.window_overlap == overlap
    assert len(plan.train) == sum(window_count(n, 48, overlap) for n in lengths) > len(lengths)
    assert all(len(t.input_ids) <= 48 and t.truncated == 0 for t in plan.train)
    choice = next(c for c in plan.choices if c.field == "data.window_overlap")
    assert "split into" in choice.reason and "nothing is cut" in choice.reason
    result = train_config(cfg)
    assert result.summary["status"] == "finished" and result.summary["train_examples"] == len(plan.train)
