"""Read a run directory (the contract in DESIGN.md) into what deploy needs to load its model.

Deploy only reads what `tunecraft train` wrote: `summary.json` (method, base model), `config.yaml`
(how prompts were rendered) and `model/` (adapter or full model, with tokenizer + template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunecraft.data.render import TemplateMode
from tunecraft.errors import TunecraftError


class RunDirError(TunecraftError):
    """A run directory that is missing pieces deploy needs."""


@dataclass(frozen=True)
class RunInfo:
    run_dir: Path
    method: Literal["lora", "full"]
    model_dir: Path  # RUN_DIR/model: a PEFT adapter (lora) or an HF model dir (full)
    base_model: str  # the model argument training started from
    base_model_path: Path | None  # its resolved local HF dir, when it still exists
    template: TemplateMode
    system_prompt: str | None
    trust_remote_code: bool


def is_run_dir(path: Path) -> bool:
    """A directory written by `tunecraft train` (has model/ plus summary.json or config.yaml)."""
    return (path / "model").is_dir() and (
        (path / "summary.json").is_file() or (path / "config.yaml").is_file()
    )


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None


def read_run(run_dir: Path | str) -> RunInfo:
    """Everything needed to load and prompt a run's model; errors name the missing file."""
    from tunecraft.config import RunConfig, load_config

    run_dir = Path(run_dir).expanduser().resolve()
    if not is_run_dir(run_dir):
        raise RunDirError(
            f"{run_dir}: not a run directory (expected model/ and summary.json written by "
            "`tunecraft train`)"
        )
    summary = _read_summary(run_dir)
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else RunConfig()
    model_dir = run_dir / "model"
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
        trust_remote_code=cfg.model.trust_remote_code,
    )


def resolve_base(info: RunInfo) -> Path:
    """The base model's local dir: the recorded path, else resolve the name again."""
    if info.base_model_path is not None:
        return info.base_model_path
    from tunecraft.models.resolve import resolve_model

    return resolve_model(info.base_model).path
