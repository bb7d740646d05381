"""Pins the command-line surface: every verb, its arguments and its option flags.

A rename or a removed flag fails here, so it has to be deliberate (update SURFACE). The
contract of shared/DESIGN.md ("these must exist and keep their meaning") is checked on its own:
SURFACE may grow, the contract may not shrink.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tunecraft.cli import app

# verb -> (argument names, {parameter name: its option strings}, boolean flags, required options)
Surface = dict[str, tuple[list[str], dict[str, tuple[str, ...]], set[str], set[str]]]

_DIST = {
    "sharding": ("--sharding",),
    "nproc_per_node": ("--nproc-per-node",),
    "nnodes": ("--nnodes",),
    "node_rank": ("--node-rank",),
    "rdzv_endpoint": ("--rdzv-endpoint",),
    "rdzv_id": ("--rdzv-id",),
    "rdzv_backend": ("--rdzv-backend",),
    "rdzv_conf": ("--rdzv-conf",),
    "master_addr": ("--master-addr",),
    "master_port": ("--master-port",),
}

_JOBS = {"url": ("--url",), "api_key": ("--api-key",)}

SURFACE: Surface = {
    "models": ([], {"as_json": ("--json",)}, {"--json"}, set()),
    "doctor": ([], {}, set(), set()),
    "data check": (
        ["data"],
        {
            "val": ("--val",),
            "model": ("--model", "-m"),
            "max_length": ("--max-length",),
            "as_json": ("--json",),
        },
        {"--json"},
        set(),
    ),
    "data show": (
        ["data"],
        {"model": ("--model", "-m"), "n": ("-n",), "max_length": ("--max-length",)},
        set(),
        set(),
    ),
    "train": (
        ["args"],
        {
            "model": ("--model", "-m"),
            "data": ("--data", "-d"),
            "val": ("--val",),
            "method": ("--method",),
            "epochs": ("--epochs",),
            "max_steps": ("--max-steps",),
            "time_budget": ("--time-budget",),
            "lr": ("--lr",),
            "max_length": ("--max-length",),
            "batch_size": ("--batch-size",),
            "seed": ("--seed",),
            "engine": ("--engine",),
            "out": ("--out", "-o"),
            "resume": ("--resume",),
            "dry_run": ("--dry-run",),
            "as_json": ("--json",),
            **_DIST,
        },
        {"--resume", "--dry-run", "--json"},
        set(),
    ),
    "serve": (
        ["targets"],
        {
            "host": ("--host",),
            "port": ("--port",),
            "api_key": ("--api-key",),
            "max_queue": ("--max-queue",),
            "max_batch": ("--max-batch",),
            "max_tokens_limit": ("--max-tokens-limit",),
            "trust_remote_code": ("--trust-remote-code",),
            "data_dir": ("--data-dir",),
            "max_jobs": ("--max-jobs",),
            "job_setting": ("--job-setting",),
        },
        {"--trust-remote-code"},
        set(),
    ),
    "export": (
        ["run_dir"],
        {
            "fmt": ("--format", "-f"),
            "out": ("--out", "-o"),
            "dtype": ("--dtype",),
            "gguf_type": ("--gguf-type",),
            "overwrite": ("--overwrite",),
            "trust_remote_code": ("--trust-remote-code",),
        },
        {"--overwrite", "--trust-remote-code"},
        {"--format", "--out"},
    ),
    "chat": (
        ["target"],
        {
            "max_tokens": ("--max-tokens",),
            "temperature": ("--temperature",),
            "system": ("--system",),
            "trust_remote_code": ("--trust-remote-code",),
            "label_constraint": ("--label-constraint", "--no-label-constraint"),
        },
        {"--trust-remote-code", "--label-constraint"},
        set(),
    ),
    "demo": ([], {"out": ("--out", "-o")}, set(), set()),
    "eval": (
        ["run_dir"],
        {
            "data": ("--data", "-d"),
            "baselines": ("--baselines",),
            "limit": ("--limit",),
            "max_new_tokens": ("--max-new-tokens",),
            "batch_size": ("--batch-size",),
            "few_shot": ("--few-shot",),
            "prompt_file": ("--prompt-file",),
            "checkpoint": ("--checkpoint",),
            "as_json": ("--json",),
            "label_constraint": ("--label-constraint", "--no-label-constraint"),
            "general": ("--general", "--no-general"),
        },
        {"--json", "--label-constraint", "--general"},
        {"--data"},
    ),
    "sweep": (["args"], {"grid": ("--grid",), "out": ("--out", "-o")}, set(), set()),
    "jobs create": (
        [],
        {"model": ("--model", "-m"), "data": ("--data", "-d"), "val": ("--val",), "suffix": ("--suffix",),
         "epochs": ("--epochs",), "seed": ("--seed",), **_JOBS},
        set(),
        {"--model", "--data"},
    ),
    "jobs list": ([], {"limit": ("--limit",), **_JOBS}, set(), set()),
    "jobs show": (["job_id"], dict(_JOBS), set(), set()),
    "jobs events": (["job_id"], {"limit": ("--limit",), **_JOBS}, set(), set()),
    "jobs cancel": (["job_id"], dict(_JOBS), set(), set()),
}

# shared/DESIGN.md, "CLI (more flags are welcome; these must exist and keep their meaning)".
# verb -> (positional arguments in order as (name, variadic), flags, boolean flags)
CONTRACT: dict[str, tuple[list[tuple[str, bool]], set[str], set[str]]] = {
    "models": ([], {"--json"}, {"--json"}),
    "data check": ([("data", False)], {"--val", "--model", "--max-length", "--json"}, {"--json"}),
    "train": (
        [("args", True)],  # [CONFIG.yaml] [key=value ...]
        {"--model", "--data", "--val", "--method", "--epochs", "--max-steps", "--lr",
         "--max-length", "--seed", "--out", "--resume"},
        {"--resume"},
    ),
    "eval": ([("run_dir", False)], {"--data", "--baselines", "--limit"}, set()),
    "chat": ([("target", False)], set(), set()),
    "export": ([("run_dir", False)], {"--format", "--out"}, set()),
    "serve": ([("targets", True)], {"--host", "--port", "--api-key"}, set()),
    "demo": ([], set(), set()),
}


def _verbs() -> dict[str, Any]:
    """Every leaf command by its full name ("data check"), walking the click tree."""
    root = typer.main.get_command(app)

    def walk(cmd: Any, prefix: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        subs = getattr(cmd, "commands", None)  # a group (typer vendors click: duck-type it)
        if subs is None:
            yield " ".join(prefix), cmd
            return
        for name, sub in subs.items():
            yield from walk(sub, (*prefix, name))

    return dict(walk(root, ()))


def _options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option"]


def _arguments(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "argument"]


def test_the_exact_set_of_verbs() -> None:
    assert set(_verbs()) == set(SURFACE)
    root = typer.main.get_command(app)
    assert set(root.commands) == {
        "models", "doctor", "data", "train", "serve", "export", "chat", "demo", "eval", "sweep", "jobs",
    }
    assert set(root.commands["data"].commands) == {"check", "show"}
    assert set(root.commands["jobs"].commands) == {"create", "list", "show", "events", "cancel"}


@pytest.mark.parametrize("verb", sorted(SURFACE))
def test_each_verb_has_exactly_its_arguments_and_flags(verb: str) -> None:
    cmd = _verbs()[verb]
    args, options, flags, required = SURFACE[verb]
    assert [p.name for p in _arguments(cmd)] == args
    got = {p.name: (*p.opts, *p.secondary_opts) for p in _options(cmd)}
    assert {name: set(opts) for name, opts in got.items()} == {
        name: set(opts) for name, opts in options.items()
    }
    assert {p.opts[0] for p in _options(cmd) if p.is_flag} == flags
    assert {p.opts[0] for p in _options(cmd) if p.required} == required


@pytest.mark.parametrize("verb", sorted(CONTRACT))
def test_design_contract_is_a_subset(verb: str) -> None:
    verbs = _verbs()
    assert verb in verbs, f"DESIGN.md names `tunecraft {verb}`"
    cmd = verbs[verb]
    positional, flags, booleans = CONTRACT[verb]
    got_args = [(p.name, p.nargs == -1) for p in _arguments(cmd)]
    assert got_args[: len(positional)] == positional
    available = {o for p in _options(cmd) for o in (*p.opts, *p.secondary_opts)}
    assert flags <= available, flags - available
    assert booleans <= {p.opts[0] for p in _options(cmd) if p.is_flag}
    # a contract flag takes a value unless the contract shows it bare
    for p in _options(cmd):
        if set(p.opts) & (flags - booleans):
            assert not p.is_flag, p.opts


def test_surface_table_covers_the_contract() -> None:
    for verb, (_, flags, _) in CONTRACT.items():
        table = {o for opts in SURFACE[verb][1].values() for o in opts}
        assert flags <= table, verb


def test_top_level_help_lists_every_verb() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for name in ("models", "doctor", "data", "train", "serve", "export", "chat", "demo", "eval",
                 "sweep"):
        assert name in result.output, name


def test_train_help_shows_its_flags() -> None:
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--model", "--data", "--epochs", "--resume", "--dry-run", "--nproc-per-node"):
        assert flag in result.output, flag


def test_export_formats_are_pinned() -> None:
    """`--format` values are part of the surface too: gguf-lora is llama.cpp's `--lora` adapter."""
    from tunecraft.export.export import FORMATS

    assert FORMATS == ("adapter", "merged", "gguf", "gguf-lora")
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "adapter, merged, gguf, or gguf-lora" in text and "gguf-lora: f16, q8_0 or f32" in text


def test_data_help_lists_check_and_show() -> None:
    result = CliRunner().invoke(app, ["data", "--help"])
    assert result.exit_code == 0, result.output
    assert "check" in result.output and "show" in result.output


def test_unknown_flag_is_a_usage_error() -> None:
    result = CliRunner().invoke(app, ["models", "--no-such-flag"])
    assert result.exit_code == 2


# Flags that set one config key: their help is that key's description, never retyped.
CONFIG_FLAGS = {
    "--model": "model.name", "--data": "data.train", "--val": "data.val", "--method": "train.method",
    "--epochs": "train.epochs", "--max-steps": "train.max_steps", "--lr": "train.lr",
    "--max-length": "data.max_length", "--batch-size": "train.batch_size", "--seed": "train.seed",
    "--engine": "train.engine", "--out": "train.out", "--sharding": "train.sharding",
}


def test_train_flag_help_is_the_config_description() -> None:
    from tunecraft.config import describe

    train = _verbs()["train"]
    helps = {flag: opt.help for opt in _options(train) for flag in opt.opts}
    for flag, key in CONFIG_FLAGS.items():
        assert helps[flag] == describe(key), flag


def test_train_help_lists_every_setting_with_its_description() -> None:
    from tunecraft.config import settings_help

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for key, description in settings_help():
        assert key in text and " ".join(description.split()) in text, key
