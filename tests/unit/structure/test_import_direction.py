"""The pipeline's stages import one way: models + data -> train -> run directory -> eval / export / serve.

Read from the source (every `import` and `from ... import`, lazy ones inside functions too), so
a backward reach fails here before it becomes a habit. Shared, stage-free modules (config,
errors, durable, rundir, curves, labels, constrained, hardware, paths) may be imported by anyone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[3] / "src" / "tunecraft"
STAGES = ("models", "data", "train", "eval", "serve", "export")

# stage -> stages it must never import
FORBIDDEN: dict[str, set[str]] = {
    "models": {"data", "train", "eval", "serve", "export"},
    "data": {"train", "eval", "serve", "export"},
    "train": {"eval", "serve", "export"},
    "eval": {"export"},
    "export": {"eval"},
    "serve": {"eval", "export"},
}
# What later stages may share from earlier ones: the loss (held-out scoring) and the generation
# engine (eval and export verify with it). Everything else about a run comes through rundir.
SHARED = {
    ("eval", "tunecraft.train.loss"),
    ("eval", "tunecraft.train.dpo"),  # the DPO loss, scored in eval exactly as in training (like train.loss)
    ("eval", "tunecraft.serve.engine"),
    ("export", "tunecraft.serve.engine"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every tunecraft import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("tunecraft")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunecraft"):
            out.append((node.lineno, node.module))
            # `from tunecraft.train import loop` imports the module tunecraft.train.loop
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if _is_module(f"{node.module}.{a.name}")]
    return out


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _files(stage: str) -> list[Path]:
    return sorted((SRC / stage).rglob("*.py"))


@pytest.mark.parametrize("stage", list(FORBIDDEN))
def test_stage_imports_no_later_stage(stage: str) -> None:
    bad = []
    for path in _files(stage):
        for line, module in _imports(path):
            target = _stage(module)
            if target in FORBIDDEN[stage] and (stage, module) not in SHARED:
                bad.append(f"{path.relative_to(SRC)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("stage", ["eval", "export", "serve"])
def test_later_stages_read_runs_only_through_rundir(stage: str) -> None:
    """No train module but the shared loss; no other stage's run-directory reader."""
    bad = []
    for path in _files(stage):
        for line, module in _imports(path):
            if _stage(module) == "train" and (stage, module) not in SHARED:
                bad.append(f"{path.relative_to(SRC)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_shared_modules_import_no_stage_but_models_and_data() -> None:
    """rundir, curves, config, durable, errors, paths, hardware: below every later stage."""
    bad = []
    for name in ("rundir", "curves", "labels", "constrained", "config", "durable", "errors", "paths", "hardware"):
        path = SRC / f"{name}.py"
        for line, module in _imports(path):
            if _stage(module) in {"train", "eval", "serve", "export"}:
                bad.append(f"{name}.py:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_runtime_and_distributed_do_not_import_each_other_both_ways() -> None:
    runtime = {m for _, m in _imports(SRC / "train" / "runtime.py")}
    dist = {m for _, m in _imports(SRC / "train" / "distributed.py")}
    assert "tunecraft.train.distributed" in runtime  # runtime builds the distribution...
    assert not any(m.startswith("tunecraft.train.runtime") for m in dist)  # ...never the reverse


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    """The parser finds lazy imports inside functions (the kind that used to slip through)."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from tunecraft.eval.verdict import run_verdict\n    return run_verdict\n")
    assert (2, "tunecraft.eval.verdict") in _imports(sample)
    assert _stage("tunecraft.eval.verdict") == "eval"
