"""Auto settings: each rule's value and reason, and the plan that resolves them all once.

The plan is the loop's only configuration, so these pin what a user with no flags gets, and
that a value the user gave is kept exactly and recorded as theirs (no auto choice for it).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tunecraft.errors import ConfigError
from tunecraft.hardware import has_fast_bf16
from tunecraft.train import auto
from tunecraft.train.loop import build
from tunecraft.train.plan import TrainSettings, make_plan, total_steps


@pytest.mark.parametrize(("n_params", "method"), [(10_000, "full"), (49_999_999, "full"),
                                                  (50_000_000, "lora"), (135_000_000, "lora")])
def test_method_from_size(n_params: int, method: str) -> None:
    assert auto.choose_method(n_params).value == method


def test_lr_by_method() -> None:
    assert auto.choose_lr("lora").value == 1e-3
    assert auto.choose_lr("full").value == 1e-4


@pytest.mark.parametrize(("n", "epochs"), [(1, 4.0), (200, 4.0), (201, 3.0), (1000, 3.0),
                                           (1001, 2.0), (5000, 2.0), (5001, 1.0)])
def test_epochs_by_data_size(n: int, epochs: float) -> None:
    assert auto.choose_epochs(n).value == epochs


@pytest.mark.parametrize(("n", "batch"), [(10, 2), (25, 2), (64, 6), (159, 15), (160, 16), (10_000, 16)])
def test_batch_size_by_data_size(n: int, batch: int) -> None:
    assert auto.choose_batch_size(n).value == batch


def test_max_length_covers_p99_rounded_to_64_within_context() -> None:
    lengths = list(range(1, 201))  # p99 = 199 -> 256
    assert auto.choose_max_length(lengths, 2048).value == 256
    assert auto.choose_max_length(lengths, 128).value == 128  # capped at the context
    assert auto.choose_max_length([3, 5], 2048).value == 64  # never below 64
    assert auto.choose_max_length([], 300).value == 300


def test_micro_batch_by_token_budget() -> None:
    assert auto.choose_micro_batch(16, 128, "cpu").value == 16  # 4096 // 128 = 32, capped at 16
    assert auto.choose_micro_batch(16, 512, "cpu").value == 8
    assert auto.choose_micro_batch(16, 8192, "cpu").value == 1
    assert auto.choose_micro_batch(64, 512, "cuda").value == 64


def test_cadence_and_epochs_for_steps() -> None:
    assert auto.choose_eval_every(54, 40_000, 2000).value == 6  # 10 evaluations (ceil(54 / 10))
    # 1,000 trained examples afford 5% * 3 * 1008 = 151 evaluated ones, less than the full pass
    # over 300 at the end alone: the fewest evaluations (3).
    choice = auto.choose_eval_every(63, 1008, 300)
    assert choice.value == 21 and "3 evaluations" in choice.reason and "full pass over 300" in choice.reason
    # 5,000 trained examples: 750, the full pass's 300 and (750 - 300) / 32 = 14 more: 10.
    assert auto.choose_eval_every(100, 5000, 300).value == 10
    # 3,000: 450, the full pass's 300 and (450 - 300) / 32 = 4 more: 5 evaluations.
    assert auto.choose_eval_every(100, 3000, 300).value == 20
    assert auto.choose_eval_every(7, 28, 8).value == 3  # never fewer than 3 evaluations
    assert auto.choose_eval_every(2, 8, 8).value == 1
    assert auto.choose_save_every().value is None  # by wall clock
    small = auto.choose_eval_examples(100, 1000, 10)  # 150 evaluated examples: the full pass and the floor
    # ... which cost what they cost, said as such: 9 * 32 + 100 = 388 examples, a third of a
    # trained one each, are ~13% of 1,000 trained ones.
    assert small.value == 32 and "the fewest" in small.reason and "~13% with 10 evaluations" in small.reason
    assert auto.choose_eval_examples(2000, 40_000, 10).value == 444  # (0.05 * 3 * 40k - 2000) / 9
    assert auto.choose_eval_examples(20, 40_000, 10).value == 20  # never more than there are
    assert auto.choose_eval_examples(300, 40_000, 10).value == 300  # 10 full passes fit in 6,000
    assert auto.choose_eval_examples(300, 40_000, 1).value == 300  # one evaluation: the full pass
    # The chosen cadence keeps the whole run's validation within the share, or at its least.
    n_evals = 5
    chosen = auto.choose_eval_examples(300, 3000, n_evals).value
    assert auto.validation_cost(300, n_evals, chosen) <= auto.validation_budget(3000) + chosen
    choice = auto.epochs_for_steps(10, 64, 8)  # 8 steps per epoch
    assert choice.value == 1.25 and "8 steps per epoch" in choice.reason


def test_precision_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert auto.choose_precision(cpu, deterministic=True).value == "fp32"
    assert auto.choose_precision(cpu, deterministic=False).value == ("bf16" if has_fast_bf16() else "fp32")


def test_total_steps() -> None:
    assert total_steps(1.0, 64, 8, None) == 8
    assert total_steps(2.5, 64, 8, None) == 20
    assert total_steps(1.0, 65, 8, None) == 9  # the partial last batch is a step
    assert total_steps(3.0, 64, 8, 10) == 10
    assert total_steps(0.01, 64, 8, None) == 1


def test_all_auto_plan_resolves_everything_once_with_reasons(make_cfg) -> None:
    cfg = make_cfg(**{"train.lr": None, "train.epochs": None, "train.batch_size": None,
                      "train.micro_batch_size": None, "train.method": "auto", "train.precision": "auto"})
    plan = make_plan(cfg)
    s = plan.settings
    # The tiny model is small (full), the 64-row data gives 57 train rows (4 epochs, batch 5).
    assert (s.method, s.lr, s.epochs, s.batch_size) == ("full", 1e-4, 4.0, 5)
    assert s.micro_batch_size == 5 and s.max_length == 128  # p99 of the rows, rounded up to 64s
    # 6 evaluations of all 6 validation rows fit 5% of 240 trained rows (0.05 * 3 * 240 / 6): every 8 steps.
    assert plan.total_steps == 48 and (s.eval_every, s.save_every, s.save_interval_s) == (8, None, 600.0)
    assert s.eval_examples == len(plan.val) == 6 and plan.eval_indices == tuple(range(6))
    chosen = [c.field for c in plan.choices]
    assert len(chosen) == len(set(chosen))  # each decided once
    assert {"train.method", "train.lr", "train.epochs", "train.batch_size", "train.micro_batch_size",
            "data.max_length", "train.compile", "train.precision", "train.threads",
            "train.eval_every", "train.save_every", "train.eval_examples", "train.gradient_checkpointing"} == set(chosen)
    assert all(c.reason for c in plan.choices)
    # config.yaml records the same decisions, with nothing left on auto.
    resolved = plan.config
    for field in dataclasses.fields(TrainSettings):
        value = getattr(s, field.name)
        section = "data" if field.name == "max_length" else "train"
        if field.name in ("base_model", "trust_remote_code", "lora", "eval_examples"):
            continue
        if field.name.startswith("dpo_"):  # train.dpo.beta, train.dpo.sft_weight
            assert getattr(resolved.train.dpo, field.name.removeprefix("dpo_")) == value, field.name
            continue
        name = "time_budget" if field.name == "time_budget_s" else field.name
        assert getattr(getattr(resolved, section), name) == value, field.name


def test_given_values_are_kept_and_not_recorded_as_choices(make_cfg) -> None:
    plan = make_plan(make_cfg(**{"train.eval_every": 3, "train.save_every": 6, "train.threads": 1,
                                 "train.compile": False, "data.max_length": 96}))
    s = plan.settings
    assert (s.lr, s.epochs, s.batch_size, s.micro_batch_size, s.method) == (1e-3, 1, 8, 8, "full")
    assert (s.eval_every, s.save_every, s.threads, s.compile, s.max_length) == (3, 6, 1, False, 96)
    chosen = {c.field for c in plan.choices}
    assert not chosen & {"train.lr", "train.epochs", "train.batch_size", "train.eval_every",
                         "train.save_every", "train.threads", "train.compile", "data.max_length"}


def test_the_plan_is_frozen(make_cfg) -> None:
    plan = make_plan(make_cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.settings.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.total_steps = 1  # type: ignore[misc]


def test_bf16_with_deterministic_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match="deterministic"):
        make_plan(make_cfg(**{"train.precision": "bf16", "train.deterministic": True}))


def test_build_does_not_change_the_plan_it_was_given(make_cfg, tmp_path) -> None:
    plan, rt = build(make_cfg())
    assert plan.run_dir == tmp_path / "run" and plan.config.train.out == str(tmp_path / "run")
    moved = plan.with_run_dir(tmp_path / "elsewhere")
    assert moved.config.train.out == str(tmp_path / "elsewhere")
    assert plan.config.train.out == str(tmp_path / "run")  # the original is untouched
    assert rt.world_size == 1 and rt.is_main and rt.threads == plan.settings.threads


def test_lr_multiplier_scales_the_resolved_lr_once(make_cfg) -> None:
    plan = make_plan(make_cfg(**{"train.lr": None, "train.lr_multiplier": 0.5}))
    assert plan.settings.lr == 1e-4 * 0.5  # the auto LR for full fine-tuning, halved
    assert plan.config.train.lr == 1e-4 and plan.config.train.lr_multiplier == 0.5  # resume re-applies once
    again = make_plan(plan.config)  # what --resume plans from config.yaml
    assert again.settings.lr == plan.settings.lr


def test_eval_subsample_is_fixed_seeded_and_bounded() -> None:
    from tunecraft.train.plan import eval_subsample

    a = eval_subsample(500, 40, seed=3)
    assert a == eval_subsample(500, 40, seed=3) and len(a) == 40 == len(set(a))
    assert a != eval_subsample(500, 40, seed=4) and list(a) == sorted(a)
    assert eval_subsample(10, 40, seed=3) == tuple(range(10))


def test_checkpoints_follow_the_wall_clock_when_save_every_is_auto(make_cfg, tmp_path) -> None:
    from runs import train_config
    from tunecraft.rundir import read_events, read_metrics

    rare = train_config(make_cfg(**{"train.max_steps": 6, "train.batch_size": 4, "train.micro_batch_size": 4,
                                     "train.save_interval_s": 3600, "train.out": str(tmp_path / "rare")}))
    saved = [e["step"] for e in read_events(rare.run_dir) if e["event"] == "checkpoint"]
    assert saved == [6]  # an hour never passed: only the end
    often = train_config(make_cfg(**{"train.max_steps": 6, "train.batch_size": 4, "train.micro_batch_size": 4,
                                      "train.save_interval_s": 1e-6, "train.out": str(tmp_path / "often")}))
    assert [e["step"] for e in read_events(often.run_dir) if e["event"] == "checkpoint"] == [1, 2, 3, 4, 5, 6]
    breakdown = often.summary["time_breakdown"]
    assert breakdown["checkpoint_s"] > 0 and breakdown["eval_s"] > 0
    assert abs(sum(breakdown.values()) - often.summary["wall_s"]) < 0.05
    evals = [r for r in read_metrics(often.run_dir) if r["type"] == "eval"]
    assert all(r["val_examples"] == len(often_plan_val(often)) for r in evals)


def often_plan_val(result) -> list:
    from tunecraft.rundir import read_split

    return read_split(result.run_dir).get("val_lines", [])


def test_subsampled_evaluations_end_with_a_full_pass(make_cfg, tmp_path) -> None:
    from runs import train_config
    from tunecraft.rundir import read_metrics

    result = train_config(make_cfg(**{"train.max_steps": 4, "train.eval_every": 2, "train.eval_examples": 3,
                                      "data.val_fraction": 0.25, "train.batch_size": 4,
                                      "train.micro_batch_size": 1}))
    rows = read_metrics(result.run_dir)
    evals = [r for r in rows if r["type"] == "eval"]
    full = [r for r in rows if r["type"] == "eval_full"]
    assert [r["val_examples"] for r in evals] == [3, 3]
    assert len(full) == 1 and full[0]["step"] == 4 and full[0]["val_examples"] == 16
    assert full[0]["val_loss_ci95"] is not None and full[0]["val_loss_ci95"] > 0  # 16 clusters of 2
    assert result.summary["final_val_loss_full"] == full[0]["val_loss"]


def test_start_up_is_measured_and_a_second_plan_retokenizes_nothing(make_cfg, tmp_path) -> None:
    from tunecraft import paths

    first = make_plan(make_cfg())
    assert set(first.timings) == {"validate_s", "resolve_s", "tokenize_s", "decide_s"}
    entries = {p: p.stat().st_mtime_ns for p in paths.data_cache_dir().rglob("*") if p.is_file()}
    assert entries  # the first plan tokenized and stored
    second = make_plan(make_cfg())
    after = {p: p.stat().st_mtime_ns for p in paths.data_cache_dir().rglob("*") if p.is_file()}
    assert after == entries  # nothing re-tokenized or re-written
    assert [e.input_ids for e in second.train] == [e.input_ids for e in first.train]
