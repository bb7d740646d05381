"""The run directory contract (DESIGN.md): the one reader and writer of a run's files.

`tunecraft train` writes a run directory; eval, export, serve and the service read it. They
depend on this module and on nothing of training's: the files below are the interface.

    RUN_DIR/config.yaml        the resolved config
    RUN_DIR/metrics.jsonl      "train" and "eval" rows
    RUN_DIR/events.jsonl       started / checkpoint / ... / finished, each with a message
    RUN_DIR/summary.json       how the run ended, with its verdict
    RUN_DIR/data/split.json    which rows trained and which validated
    RUN_DIR/checkpoints/step-NNNNNN/   resumable states (COMPLETE written last)
    RUN_DIR/model/             the deliverable: PEFT adapter or full HF model
    RUN_DIR/labels.json        closed-label tasks only: the label set, reject label, threshold
    RUN_DIR/eval.json, report/index.html   written by `tunecraft eval`
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunecraft.data.render import TemplateMode
from tunecraft.durable import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    recover_children,
    recover_dir,
)
from tunecraft.errors import TunecraftError

if TYPE_CHECKING:
    from tunecraft.config import RunConfig
    from tunecraft.labels import LabelSet

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
SPLIT = "data/split.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"
EVAL = "eval.json"
LABELS = "labels.json"
REPORT = "report/index.html"
COMPLETE = "COMPLETE"  # written last into a checkpoint: only then does it count
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")




class RunDirError(TunecraftError):
    """A run directory that is missing pieces, or holds a file that cannot be read."""


# ----------------------------------------------------------------------------- JSON lines


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """One line per write, flushed and fsynced: a killed run keeps every row it reported."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL log; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ----------------------------------------------------------------------------- writing


class RunLog:
    """Appends metric and event rows and writes the summary; a no-op when disabled (ranks > 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled

    def metric(self, kind: str, **fields: Any) -> None:
        if self.enabled:
            append_jsonl(self.run_dir / METRICS, {"type": kind, **fields})

    def event(self, kind: str, message: str, **fields: Any) -> None:
        if self.enabled:
            row = {"event": kind, "time": round(time.time(), 3), "message": message, **fields}
            append_jsonl(self.run_dir / EVENTS, row)

    def summary(self, payload: dict[str, Any]) -> None:
        if self.enabled:
            atomic_write_json(self.run_dir / SUMMARY, payload)


def truncate_metrics(run_dir: Path, step: int) -> None:
    """After resuming from `step`, drop metric rows of steps that will be run again."""
    path = Path(run_dir) / METRICS
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_config(run_dir: Path, cfg: RunConfig) -> None:
    from tunecraft.config import dump_config

    atomic_write(Path(run_dir) / CONFIG, lambda tmp: dump_config(cfg, tmp))


def write_split(run_dir: Path, split: dict[str, Any]) -> None:
    """Record which rows trained and which validated (eval takes few-shot examples from them)."""
    path = Path(run_dir) / SPLIT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, split, indent=1)


def write_eval(run_dir: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / EVAL, payload, indent=1)


def write_labels(run_dir: Path, labels: LabelSet) -> None:
    """Record a closed-label run's label set (and its calibrated reject threshold)."""
    atomic_write_json(Path(run_dir) / LABELS, labels.to_json(), indent=1)


def write_report(run_dir: Path, html: str) -> Path:
    out = Path(run_dir) / REPORT
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    return out


# ----------------------------------------------------------------------------- reading


def has_run(run_dir: Path) -> bool:
    """A run was started here (its config was written)."""
    return (Path(run_dir) / CONFIG).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return value


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json, or {} when the run has not written one yet."""
    return _read_json(Path(run_dir) / SUMMARY)


def read_config(run_dir: Path) -> RunConfig:
    """The run's resolved config (defaults when config.yaml is missing)."""
    from tunecraft.config import RunConfig, load_config

    path = Path(run_dir) / CONFIG
    return load_config(path) if path.is_file() else RunConfig()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / EVENTS)


def read_split(run_dir: Path) -> dict[str, Any]:
    return _read_json(Path(run_dir) / SPLIT)


def read_labels(run_dir: Path) -> LabelSet | None:
    """The run's label set, or None when its answers are free text (no labels.json)."""
    from tunecraft.labels import LabelSet

    path = Path(run_dir) / LABELS
    if not path.is_file():
        return None
    try:
        return LabelSet.from_json(_read_json(path))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDirError(f"{path}: {exc}") from None


def read_eval(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / EVAL
    if not path.is_file():
        raise RunDirError(f"{path}: not found; run `tunecraft eval {run_dir} --data TEST` first")
    return _read_json(path)


def checkpoint_step(path: Path) -> int | None:
    """`step-000120` -> 120; None for anything else (temp and old directories included)."""
    match = _CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp dirs and those without COMPLETE are skipped).

    A checkpoint a crash left parked mid-replacement (`step-N.old-PID`) is restored first.
    """
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    recover_children(root)
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def checkpoint_steps(run_dir: Path) -> set[int]:
    return {step for p in complete_checkpoints(run_dir) if (step := checkpoint_step(p)) is not None}


# ----------------------------------------------------------------------------- deployment view


@dataclass(frozen=True)
class RunInfo:
    """What loading and prompting a run's model needs."""

    run_dir: Path
    method: Literal["lora", "full"]
    model_dir: Path  # RUN_DIR/model: a PEFT adapter (lora) or an HF model dir (full)
    base_model: str  # the model argument training started from
    base_model_path: Path | None  # its resolved local HF dir, when it still exists
    template: TemplateMode
    system_prompt: str | None
    # No trust_remote_code here on purpose: a run directory may come from anyone, so whether a
    # model's own code may run is decided by the flag of the command loading it, never by the run.


def is_run_dir(path: Path) -> bool:
    """A directory written by `tunecraft train` (has model/ plus summary.json or config.yaml)."""
    path = Path(path)
    recover_dir(path / MODEL)  # a crash mid-replacement may have parked model/ as model.old-PID
    return (path / MODEL).is_dir() and ((path / SUMMARY).is_file() or (path / CONFIG).is_file())


def read_run(run_dir: Path | str) -> RunInfo:
    """Everything needed to load and prompt a run's model; errors name the missing file."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir}: not a run directory (expected model/ and summary.json written by "
            "`tunecraft train`)"
        )
    summary = read_summary(run_dir)
    cfg = read_config(run_dir)
    model_dir = run_dir / MODEL
    is_adapter = (model_dir / "adapter_config.json").is_file()
    method = summary.get("method") or ("lora" if is_adapter else "full")
    if method == "lora" and not is_adapter:
        raise RunDirError(f"{model_dir}: summary says LoRA but adapter_config.json is missing")
    if method == "full" and not (model_dir / "config.json").is_file():
        raise RunDirError(f"{model_dir}: summary says full fine-tuning but config.json is missing")
    base_path = summary.get("base_model_path")
    return RunInfo(
        run_dir=run_dir,
        method=method,
        model_dir=model_dir,
        base_model=summary.get("base_model") or cfg.model.name,
        base_model_path=Path(base_path) if base_path and Path(base_path).is_dir() else None,
        template=cfg.data.template,
        system_prompt=cfg.data.system_prompt,
    )


def resolve_base(info: RunInfo) -> Path:
    """The base model's local dir: the recorded path, else resolve the name again."""
    if info.base_model_path is not None:
        return info.base_model_path
    from tunecraft.models.resolve import resolve_model

    return resolve_model(info.base_model).path
