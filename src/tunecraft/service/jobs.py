"""Fine-tuning job requests: OpenAI's body, validated, and the `tunecraft train` command it becomes.

A job is the CLI's own training run: `model` names a base model this server serves, the files
are uploads (server paths), and the hyperparameters map to train flags. Nothing the client sends
becomes a path or a flag of its own.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Auto = Literal["auto"]
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Hyperparameters(_Body):
    n_epochs: Auto | int = Field("auto", description="Passes over the training data (1-50).")
    batch_size: Auto | int = Field("auto", description="Examples per optimizer step (1-256).")
    learning_rate_multiplier: Auto | float = Field("auto", description="Scales the auto learning rate (0-10].")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        if v != "auto" and not 1 <= v <= 50:
            raise ValueError("n_epochs must be 'auto' or 1-50")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        if v != "auto" and not 1 <= v <= 256:
            raise ValueError("batch_size must be 'auto' or 1-256")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        if v != "auto" and not 0 < v <= 10:
            raise ValueError("learning_rate_multiplier must be 'auto' or in (0, 10]")
        return v


class Supervised(_Body):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class DpoHyperparameters(Hyperparameters):
    beta: Auto | float = Field("auto", description="DPO beta (0-10]; auto: 0.1.")

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        if v != "auto" and not 0 < v <= 10:
            raise ValueError("beta must be 'auto' or in (0, 10]")
        return v


class Dpo(_Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Body):
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: Supervised = Field(default_factory=Supervised)
    dpo: Dpo = Field(default_factory=Dpo)  # type "dpo": preference tuning (`tunecraft train --method dpo`)


# tunecraft's own per-job training settings (beyond OpenAI's body): `key=value` as `tunecraft
# train` takes them, from this list only. None of these names a path, a model, code to trust or
# the machine's resources; those stay the server's (`--job-setting`).
SETTING_KEYS = (
    "train.method", "train.time_budget", "train.epochs", "train.max_steps", "train.lr",
    "train.batch_size", "train.warmup_ratio", "train.schedule", "train.weight_decay", "train.eval_every",
    "train.patience", "data.max_length", "data.system_prompt", "lora.r", "lora.alpha", "lora.dropout",
)


class JobRequest(_Body):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    validation_file: str | None = Field(None, max_length=128)
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated top-level form, still accepted
    settings: dict[str, str | int | float | None] | None = None  # tunecraft's extension (SETTING_KEYS)

    @field_validator("settings")
    @classmethod
    def _settings(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if not v:
            return None
        unknown = [k for k in v if k not in SETTING_KEYS]
        if unknown:
            raise ValueError(f"settings: {', '.join(unknown)} cannot be set per job; allowed: {', '.join(SETTING_KEYS)}")
        from tunecraft.config import build_config
        from tunecraft.errors import ConfigError

        try:  # the config's own checks (a method that does not exist, a negative LR) answer now
            build_config(None, setting_overrides(v))
        except ConfigError as exc:
            raise ValueError(str(exc).replace("invalid configuration:\n", "")) from None
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not SUFFIX.match(v):
            raise ValueError("suffix: 1-64 characters of letters, digits, '-' and '_'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("metadata: at most 16 pairs, keys up to 64 and values up to 512 characters")
        return v

    def hyper(self) -> Hyperparameters:
        """The method's hyperparameters, else the deprecated top-level ones, else all auto."""
        if self.method is not None and self.method.type == "dpo":
            return self.method.dpo.hyperparameters
        if self.method is not None and self.method.supervised.hyperparameters.model_fields_set:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or (self.method.supervised.hyperparameters if self.method else Hyperparameters())


DEFAULT_SEED = 42  # the CLI's default: the same job twice trains the same model


def setting_overrides(settings: dict[str, Any] | None) -> list[str]:
    """A job's settings as `key=value` overrides (None: back to the setting's default)."""
    return [f"{k}={'null' if v is None else v}" for k, v in (settings or {}).items()]


def train_command(job: dict[str, Any], base_target: str, train_path: Path, val_path: Path | None,
                  job_settings: list[str]) -> list[str]:
    """The child's command line: the CLI's `train` (or `train --resume`) for this job."""
    entry = [sys.executable, "-m", "tunecraft.service.child", "train"]
    run_dir = str(job["run_dir"])
    if job["resume"]:
        return [*entry, "--resume", "--out", run_dir]
    hyper = job["hyperparameters"]
    cmd = [*entry, "--model", base_target, "--data", str(train_path), "--out", run_dir,
           "--seed", str(job["seed"])]
    if (job.get("method") or {}).get("type") == "dpo":
        cmd += ["--method", "dpo"]
        if hyper.get("beta", "auto") != "auto":
            cmd.append(f"train.dpo.beta={hyper['beta']}")
    if val_path is not None:
        cmd += ["--val", str(val_path)]
    if hyper.get("n_epochs", "auto") != "auto":
        cmd += ["--epochs", str(hyper["n_epochs"])]
    if hyper.get("batch_size", "auto") != "auto":
        cmd += ["--batch-size", str(hyper["batch_size"])]
    if hyper.get("learning_rate_multiplier", "auto") != "auto":
        cmd.append(f"train.lr_multiplier={hyper['learning_rate_multiplier']}")
    # The job's own settings last: the client chose them for this job, over the server's defaults.
    return [*cmd, *job_settings, *setting_overrides((job.get("method") or {}).get("settings"))]
