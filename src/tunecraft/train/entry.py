"""`tunecraft train` as a function: parse positional args, build the config, plan, run, report."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from tunecraft.config import RunConfig, build_config, load_config
from tunecraft.errors import ConfigError
from tunecraft.out import plain


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG.yaml] [key=value ...] -> (config path, overrides)."""
    config: str | None = None
    overrides: list[str] = []
    for arg in args:
        if "=" in arg:
            overrides.append(arg)
        elif arg.endswith((".yaml", ".yml")) and config is None:
            config = arg
        else:
            raise ConfigError(
                f"unexpected argument {arg!r}: expected a CONFIG.yaml file or key=value overrides "
                "(e.g. train.lr=1e-4)"
            )
    return config, overrides


def resolve_config(args: list[str], values: dict[str, Any], resume: bool) -> RunConfig:
    config_path, overrides = split_args(args)
    if resume:
        out = values.get("train.out")
        if not out:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: {saved} not found; is {out} a run directory?")
        cfg = load_config(saved)
        # A run directory may come from anyone: its own config never lets a model's code run.
        # Only this command's explicit `model.trust_remote_code=true` does.
        cfg.model.trust_remote_code = _asked_for_remote_code(overrides)
        return _extended(cfg, config_path, overrides, values)
    return build_config(config_path, overrides, values)


EXTENDABLE = ("train.epochs", "train.max_steps")  # what --resume may change: how long the run goes on
_RUNTIME = ("train.out", "train.sharding", "model.trust_remote_code")  # how it runs, not what it learns


def _extended(cfg: RunConfig, config_path: str | None, overrides: list[str], values: dict[str, Any]) -> RunConfig:
    """The recorded config, with --epochs / --max-steps to extend the run; any other change refused.

    Changing what the run learns halfway (the LR, the data, the model) would silently make it
    a different run, so only its length may change: the loop records the extension as a new
    schedule segment.
    """
    asked = build_config(config_path, overrides, {k: v for k, v in values.items() if v is not None})
    given = {k for k, v in values.items() if v is not None} | {o.partition("=")[0].strip() for o in overrides}
    changed = [k for k in sorted(given - set(EXTENDABLE) - set(_RUNTIME)) if _get(asked, k) != _get(cfg, k)]
    if config_path is not None or changed:
        what = ", ".join(changed) if changed else f"the settings of {config_path}"
        raise ConfigError(
            f"--resume continues {cfg.train.out} with the settings it recorded; {what} cannot change "
            "(only --epochs or --max-steps, to train it longer). Start a new run with another --out "
            "to change them."
        )
    if not given & set(EXTENDABLE):
        return cfg
    cfg.train.epochs = asked.train.epochs if "train.epochs" in given else cfg.train.epochs
    cfg.train.max_steps = asked.train.max_steps if "train.max_steps" in given else None
    cfg.train.time_budget = None  # an extension runs its asked length, not the first budget's
    return cfg


def _get(cfg: RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section, None), name, None)


def _asked_for_remote_code(overrides: list[str]) -> bool:
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "model.trust_remote_code":
            return value.strip().lower() in ("true", "1", "yes", "on")
    return False


def run_train(
    args: list[str], values: dict[str, Any], resume: bool, dry_run: bool, console: Console,
    as_json: bool = False,
) -> int:
    """Returns the process exit code: 0 done, 1 failed, 130 interrupted (resumable).

    Under torchrun every rank runs this; only rank 0 prints (errors still print on any rank).
    `as_json` (with `dry_run`): the plan as one JSON object on stdout, progress on stderr.
    """
    import transformers

    from tunecraft.train.loop import build, measure_step_time, train
    from tunecraft.train.show import plan_json, print_outcome, print_plan

    if as_json and not dry_run:
        raise ConfigError("--json prints the plan of a --dry-run; add --dry-run")
    if as_json:  # stdout carries the JSON alone
        console = Console(stderr=True)

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # Deprecation notices from inside transformers/peft are for their developers, not our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if int(os.environ.get("RANK", "0")) != 0:
        console = Console(quiet=True)
    cfg = resolve_config(args, values, resume)
    plan, rt = build(cfg, on_status=plain(console), resume=resume)
    # On an error the process group is left as is: another rank may still be inside a
    # collective, and exiting (torchrun then stops the others) releases everything.
    if dry_run:
        from tunecraft.train.memory import measured_peak

        step_s = measure_step_time(plan, rt)
        peak = measured_peak(rt.device)  # this process ran real steps: its peak is the run's
        rt.dist.shutdown()
        if as_json:
            print(json.dumps(plan_json(plan, step_s, peak), default=str), flush=True)
        else:
            print_plan(plan, console, step_s=step_s, peak_bytes=peak)
        return 0
    if not resume:
        print_plan(plan, console)
    result = train(plan, rt, resume=resume, console=console)
    rt.dist.shutdown()
    if result.status in ("finished", "early_stopped") and rt.is_main:
        from tunecraft.train.labels import record_labels

        # Closed-label tasks: labels.json, and the reject threshold from the delivered model on validation.
        record_labels(result.run_dir, plan.config, plan.data.train_examples, plan.data.val_examples,
                      plan.model.path, on_status=plain(console))
    print_outcome(result.summary, result.run_dir, console)
    return 130 if result.status == "interrupted" else 0
