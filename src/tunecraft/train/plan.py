"""Everything decided before weights load: validated data, resolved model, auto hyperparameters.

`make_plan` validates the data (every error at once, with PATH:LINE), resolves the model,
tokenizes (cached), splits, and fills every "auto" setting with a reason. It loads only the
tokenizer and config, never the weights, so a mistake is reported in seconds.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft.config import RunConfig
from tunecraft.data.batching import count_loss_tokens, steps_per_epoch
from tunecraft.data.prepare import PreparedData, prepare, read_examples, truncate
from tunecraft.data.render import TokenizedExample
from tunecraft.data.stats import default_max_length
from tunecraft.errors import ConfigError, DataError
from tunecraft.models.load import load_tokenizer
from tunecraft.models.resolve import ResolvedModel, resolve_model
from tunecraft.train import auto
from tunecraft.train.lora import count_params
from tunecraft.train.runtime import pick_device


@dataclass
class Plan:
    cfg: RunConfig  # fully resolved: no "auto" left
    run_dir: Path
    model: ResolvedModel
    tokenizer: Any
    data: PreparedData
    train: list[TokenizedExample]  # truncated to max_length
    val: list[TokenizedExample]
    n_params: int
    total_steps: int
    choices: list[auto.Choice] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.train)

    @property
    def train_loss_tokens(self) -> int:
        return sum(count_loss_tokens(e) for e in self.train)


def default_run_dir() -> Path:
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_paths(cfg: RunConfig) -> None:
    """File problems in the config, all at once."""
    problems = []
    if not cfg.data.train:
        problems.append("data.train: no training data given (use --data FILE)")
    elif not Path(cfg.data.train).is_file():
        problems.append(f"data.train: {cfg.data.train}: no such file")
    if cfg.data.val and not Path(cfg.data.val).is_file():
        problems.append(f"data.val: {cfg.data.val}: no such file")
    if cfg.train.micro_batch_size and cfg.train.batch_size and cfg.train.micro_batch_size > cfg.train.batch_size:
        problems.append(
            f"train.micro_batch_size: {cfg.train.micro_batch_size} is larger than train.batch_size "
            f"{cfg.train.batch_size}; lower it or raise the batch size"
        )
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def _validate_data(cfg: RunConfig) -> tuple[list[Any], list[Any] | None]:
    """Read train and val, collecting the errors of both files into one DataError."""
    errors: list[str] = []
    train_ex = val_ex = None
    try:
        train_ex = read_examples(Path(cfg.data.train or ""))
    except DataError as exc:
        errors.append(str(exc))
    if cfg.data.val:
        try:
            val_ex = read_examples(Path(cfg.data.val))
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors))
    if not train_ex:
        raise DataError(f"{cfg.data.train}: no training examples")
    return train_ex, val_ex


def _fill_auto(cfg: RunConfig, n_params: int, data: PreparedData, context: int) -> list[auto.Choice]:
    choices: list[auto.Choice] = []

    def choose(current: object, choice: auto.Choice) -> None:
        if current in (None, "auto"):
            auto.apply(cfg, choice)
            choices.append(choice)

    choose(cfg.train.method, auto.choose_method(n_params))
    choose(cfg.train.lr, auto.choose_lr(cfg.train.method))
    choose(cfg.train.batch_size, auto.choose_batch_size(len(data.train)))
    if cfg.train.max_steps is not None and cfg.train.epochs is None:
        per_epoch = steps_per_epoch(len(data.train), cfg.train.batch_size or 1)
        choose(None, auto.Choice("train.epochs", cfg.train.max_steps / per_epoch,
                                 f"--max-steps {cfg.train.max_steps} at {per_epoch} steps per epoch"))
    choose(cfg.train.epochs, auto.choose_epochs(len(data.train)))
    choose(cfg.data.max_length, auto.choose_max_length([len(e.input_ids) for e in data.train], context))
    device_type = pick_device().type
    choose(
        cfg.train.micro_batch_size,
        auto.choose_micro_batch(cfg.train.batch_size or 1, cfg.data.max_length or 512, device_type),
    )
    if cfg.train.micro_batch_size and cfg.train.batch_size and cfg.train.micro_batch_size > cfg.train.batch_size:
        cfg.train.micro_batch_size = cfg.train.batch_size
    choose(cfg.train.compile, auto.choose_compile())
    return choices


def make_plan(cfg: RunConfig, on_status: Any = None) -> Plan:
    """Validate, resolve and decide everything; the returned cfg has no auto values left."""
    cfg = cfg.model_copy(deep=True)
    check_paths(cfg)
    train_ex, val_ex = _validate_data(cfg)
    model = resolve_model(cfg.model.name, on_status=on_status)
    tokenizer = load_tokenizer(model.path, trust_remote_code=cfg.model.trust_remote_code)
    data = prepare(
        Path(cfg.data.train or ""),
        Path(cfg.data.val) if cfg.data.val else None,
        tokenizer,
        None,  # untruncated: max_length may be chosen from these lengths
        cfg.data.template,
        cfg.data.system_prompt,
        cfg.data.val_fraction,
        cfg.train.seed,
        train_examples=train_ex,
        val_examples=val_ex,
    )
    if not data.val:
        raise DataError(
            f"{cfg.data.train}: too few examples to hold out a validation set; add examples or "
            "pass --val FILE"
        )
    n_params = count_params(model.path, cfg.model.trust_remote_code)
    context = default_max_length(tokenizer, model.path)
    choices = _fill_auto(cfg, n_params, data, context)
    if (cfg.data.max_length or 0) > context:
        raise ConfigError(f"data.max_length: {cfg.data.max_length} exceeds the model's context ({context})")
    max_len = int(cfg.data.max_length or context)
    train, val = truncate(data.train, max_len), truncate(data.val, max_len)
    if sum(count_loss_tokens(e) for e in train) == 0:
        raise DataError("no example has a loss-bearing token left after truncation; raise --max-length")
    total = _total_steps(cfg, len(train))
    eval_every = cfg.train.eval_every or auto.choose_eval_every(total).value
    if cfg.train.eval_every is None:
        choices.append(auto.choose_eval_every(total))
        cfg.train.eval_every = int(eval_every)  # type: ignore[arg-type]
    if cfg.train.save_every is None:
        cfg.train.save_every = cfg.train.eval_every
    run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir()
    cfg.train.out = str(run_dir)
    return Plan(cfg, run_dir, model, tokenizer, data, train, val, n_params, total, choices)


def _total_steps(cfg: RunConfig, n_train: int) -> int:
    per_epoch = steps_per_epoch(n_train, cfg.train.batch_size or 1)
    total = max(1, math.ceil((cfg.train.epochs or 1.0) * per_epoch - 1e-9))
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    return total
