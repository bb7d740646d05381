"""Everything decided before weights load: validated data, resolved model, every auto setting.

`make_plan` validates the data (every error at once, with PATH:LINE), resolves the model,
tokenizes (cached), splits, and resolves every "auto" setting once, with its reason. It loads
only the tokenizer and config, never the weights, so a mistake is reported in seconds.

The result is a frozen `Plan` whose `settings` are fully typed: the loop reads its
configuration from there and nowhere else, so no default can be applied twice or differently.
`plan.config` is the same decisions as a `RunConfig`, written to the run's `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunecraft.config import LoraConfig, RunConfig
from tunecraft.data.batching import steps_per_epoch
from tunecraft.data.prepare import (PreparedData, example_formats, fit_length, prepare_sources, read_examples,
                                    sequence_lengths, text_lengths, total_loss_tokens, total_tokens, window_count,
                                    window_overlap)
from tunecraft.data.render import TokenizedExample
from tunecraft.errors import ConfigError, DataError
from tunecraft.models.facts import context_length, count_params, pick_device
from tunecraft.models.load import load_tokenizer
from tunecraft.models.resolve import ResolvedModel, resolve_model
from tunecraft.train import auto, memory
from tunecraft.train.attention import kept_score_bytes
from tunecraft.train.lora import qlora_problems
from tunecraft.train.memory import MemoryEstimate


@dataclass(frozen=True)
class TrainSettings:
    """The loop's whole configuration: every value resolved (None only where it means "off")."""

    base_model: str  # the model argument, as the user gave it
    trust_remote_code: bool
    method: Literal["lora", "full"]
    lora: LoraConfig
    epochs: float
    lr: float
    batch_size: int  # examples per optimizer step
    micro_batch_size: int  # examples per forward pass
    max_length: int
    warmup_ratio: float
    schedule: Literal["cosine", "linear", "constant"]
    weight_decay: float
    grad_clip: float | None  # None: no clipping
    seed: int
    eval_every: int
    save_every: int | None  # None: by wall clock, every save_interval_s
    save_interval_s: float
    eval_examples: int  # validation examples per intermediate evaluation
    keep_checkpoints: int
    patience: int | None  # None: no early stopping
    time_budget_s: float | None  # None: no wall-clock budget
    precision: Literal["fp32", "bf16"]  # the compute precision actually used
    deterministic: bool
    engine: Literal["fast", "reference"]
    compile: bool
    threads: int
    gradient_checkpointing: bool
    sharding: Literal["ddp", "fsdp"]
    objective: Literal["sft", "dpo"] = "sft"
    dpo_beta: float = 0.1  # DPO's beta (objective dpo)
    dpo_sft_weight: float = 0.0  # weight of the chosen answers' cross-entropy in the DPO loss

    @property
    def fused_optimizer(self) -> bool:
        return not self.deterministic  # fused AdamW's kernels are not bit-reproducible


@dataclass(frozen=True)
class Plan:
    config: RunConfig  # the resolved config (what config.yaml records)
    settings: TrainSettings
    run_dir: Path
    model: ResolvedModel
    tokenizer: Any
    data: PreparedData
    train: Sequence[TokenizedExample]  # truncated to max_length (raw-text JSONL: windows read from disk)
    val: Sequence[TokenizedExample]
    n_params: int
    total_steps: int
    choices: tuple[auto.Choice, ...] = ()
    eval_indices: tuple[int, ...] = ()  # the fixed validation subsample of intermediate evaluations
    timings: dict[str, float] = field(default_factory=dict)  # seconds per planning stage
    memory: MemoryEstimate | None = None  # the estimated peak of a training step
    # The most steps a time budget's refit may grow the run to, when the warm-up was measured
    # slower than the steps then run (a machine busy for a moment); None: total_steps.
    step_cap: int | None = None

    @property
    def step_limit(self) -> int:
        """The steps the run may reach: its planned steps, or more where a budget allows."""
        return max(self.total_steps, self.step_cap or 0)

    @property
    def train_tokens(self) -> int:
        return total_tokens(self.train)

    @property
    def train_loss_tokens(self) -> int:
        return total_loss_tokens(self.train)

    def with_run_dir(self, run_dir: Path) -> Plan:
        """The same plan writing to another run directory (config.yaml says so too)."""
        config = self.config.model_copy(deep=True)
        config.train.out = str(run_dir)
        return dataclasses.replace(self, run_dir=run_dir, config=config)


class _Clock:
    """Seconds spent in each stage of planning (reported in the plan and summary.json)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def default_run_dir() -> Path:
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def check_paths(cfg: RunConfig) -> None:
    """File and consistency problems in the config, all at once."""
    problems = []
    if not cfg.data.train:
        problems.append("data.train: no training data given (use --data FILE)")
    for source in cfg.data.sources():
        if not Path(source.path).is_file():
            problems.append(f"data.train: {source.path}: no such file")
    if cfg.data.val and not Path(cfg.data.val).is_file():
        problems.append(f"data.val: {cfg.data.val}: no such file")
    if cfg.train.micro_batch_size and cfg.train.batch_size and cfg.train.micro_batch_size > cfg.train.batch_size:
        problems.append(
            f"train.micro_batch_size: {cfg.train.micro_batch_size} is larger than train.batch_size "
            f"{cfg.train.batch_size}; lower it or raise the batch size"
        )
    if cfg.train.deterministic and cfg.train.precision == "bf16":
        problems.append("train.precision: bf16 contradicts train.deterministic=true (bit-reproducible "
                        "runs compute in fp32); drop one of them")
    problems += qlora_problems(cfg, pick_device())
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))


def check_objective(cfg: RunConfig, train_ex: list[Any], val_ex: list[Any] | None) -> None:
    """Preference pairs train with DPO, everything else supervised: a mismatch is a clear error."""
    dpo = cfg.train.objective == "dpo"
    for role, examples in (("data.train", train_ex), ("data.val", val_ex or [])):
        if not examples:
            continue
        pairs = examples[0].format == "preference"
        path = cfg.data.train_label() if role == "data.train" else cfg.data.val
        if dpo and not pairs:
            raise DataError(f"{role}: {path} holds {examples[0].format} examples, but train.objective=dpo "
                            "learns from preference pairs: {\"prompt\", \"chosen\", \"rejected\"} or OpenAI's "
                            "{\"input\", \"preferred_output\", \"non_preferred_output\"} (details: tunecraft data "
                            "check). Drop --method dpo to fine-tune on these examples.")
        if pairs and not dpo:
            raise DataError(f"{role}: {path} holds preference pairs; train them with --method dpo "
                            "(train.objective=dpo), or give examples with one answer each for "
                            "supervised fine-tuning.")


def _validate_data(cfg: RunConfig) -> tuple[list[list[Any]], list[Any] | None]:
    """Read every training file and val, collecting the errors of all of them into one DataError
    (each with its own PATH:LINE); returns each training file's examples and val's."""
    errors: list[str] = []
    parts: list[list[Any]] = []
    val_ex = None
    for source in cfg.data.sources():
        try:
            parts.append(read_examples(Path(source.path)))
        except DataError as exc:
            errors.append(str(exc))
    if cfg.data.val:
        try:
            val_ex = read_examples(Path(cfg.data.val))
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors))
    for source, examples in zip(cfg.data.sources(), parts):
        if not examples:
            raise DataError(f"{source.path}: no training examples")
    formats = {part[0].format == "preference" for part in parts}
    if len(formats) > 1:
        raise DataError(f"data.train: {cfg.data.train_label()} mixes preference pairs with examples of one "
                        "answer; supervised and preference data train in separate runs")
    return parts, val_ex


class _Resolver:
    """Fills the auto values of a config copy, in dependency order, keeping each reason."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.choices: list[auto.Choice] = []

    def choose(self, current: object, make: Any) -> None:
        """Apply `make()` (a Choice) when `current` is auto; `make` runs only then."""
        if current in (None, "auto"):
            choice = make()
            auto.apply(self.cfg, choice)
            self.choices.append(choice)


def _resolve(cfg: RunConfig, n_params: int, data: PreparedData, context: int) -> list[auto.Choice]:
    r = _Resolver(cfg)
    tc = cfg.train
    device = pick_device()
    r.choose(tc.method, lambda: auto.choose_method(n_params, cfg.lora.quantize))
    r.choose(tc.lr, lambda: auto.choose_lr(str(tc.method), tc.objective))
    r.choose(tc.batch_size, lambda: auto.choose_batch_size(len(data.train)))
    if tc.max_steps is not None and tc.epochs is None:
        r.choose(tc.epochs, lambda: auto.epochs_for_steps(int(tc.max_steps or 0), len(data.train), int(tc.batch_size or 1)))
    r.choose(tc.epochs, lambda: auto.choose_epochs(len(data.train)))
    raw_text = bool(data.train_examples) and all(f == "text" for f in example_formats(data.train_examples))
    r.choose(cfg.data.max_length, lambda: auto.choose_max_length(sequence_lengths(data.train),
                                                                 context, raw_text))
    r.choose(tc.micro_batch_size, lambda: auto.choose_micro_batch(int(tc.batch_size or 1), int(cfg.data.max_length or context), device.type,
                                                                  2 if tc.objective == "dpo" else 1))
    if tc.micro_batch_size and tc.batch_size and tc.micro_batch_size > tc.batch_size:
        tc.micro_batch_size = tc.batch_size
    r.choose(tc.compile, auto.choose_compile)
    r.choose(tc.precision, lambda: auto.choose_precision(device, tc.deterministic))
    r.choose(tc.threads, auto.choose_threads)
    return r.choices


def _resolve_cadence(cfg: RunConfig, total_steps: int, n_val: int,
                     forward_share: float = auto.FORWARD_SHARE) -> list[auto.Choice]:
    r = _Resolver(cfg)
    tc = cfg.train
    trained = total_steps * int(tc.batch_size or 1)
    r.choose(tc.eval_every, lambda: auto.choose_eval_every(total_steps, trained, n_val, forward_share))
    r.choose(tc.save_every, auto.choose_save_every)
    n_evals = total_steps // int(tc.eval_every or 1) + (total_steps % int(tc.eval_every or 1) > 0)
    r.choose(tc.eval_examples, lambda: auto.choose_eval_examples(n_val, trained, n_evals, forward_share))
    return r.choices


def eval_subsample(n_val: int, n: int, seed: int) -> tuple[int, ...]:
    """The same seeded validation subset at every evaluation (all of it when n >= n_val)."""
    if n >= n_val:
        return tuple(range(n_val))
    return tuple(sorted(random.Random(seed).sample(range(n_val), n)))


def _settings(cfg: RunConfig) -> TrainSettings:
    """The loop's settings from a resolved config; a value still missing is a bug, said loudly."""
    tc, missing = cfg.train, []

    def need(name: str, value: Any) -> Any:
        if value is None or value == "auto":
            missing.append(name)
        return value

    settings = TrainSettings(
        base_model=cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
        method=need("train.method", tc.method), lora=cfg.lora.model_copy(deep=True),
        epochs=need("train.epochs", tc.epochs), lr=(need("train.lr", tc.lr) or 0.0) * tc.lr_multiplier,
        batch_size=need("train.batch_size", tc.batch_size),
        micro_batch_size=need("train.micro_batch_size", tc.micro_batch_size),
        max_length=need("data.max_length", cfg.data.max_length), warmup_ratio=tc.warmup_ratio,
        schedule=tc.schedule, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip, seed=tc.seed,
        eval_every=need("train.eval_every", tc.eval_every), save_every=tc.save_every,
        save_interval_s=tc.save_interval_s, eval_examples=need("train.eval_examples", tc.eval_examples),
        keep_checkpoints=tc.keep_checkpoints, patience=tc.patience, time_budget_s=tc.time_budget,
        precision=need("train.precision", tc.precision), deterministic=tc.deterministic,
        engine=tc.engine, compile=need("train.compile", tc.compile), threads=need("train.threads", tc.threads),
        gradient_checkpointing=need("train.gradient_checkpointing", tc.gradient_checkpointing),
        sharding=tc.sharding, objective=tc.objective, dpo_beta=tc.dpo.beta, dpo_sft_weight=tc.dpo.sft_weight,
    )
    assert not missing, f"the plan left settings unresolved: {missing}"
    return settings


def make_plan(cfg: RunConfig, on_status: Any = None) -> Plan:
    """Validate, resolve and decide everything; nothing is left on auto."""
    cfg = cfg.model_copy(deep=True)
    clock = _Clock()
    check_paths(cfg)
    train_parts, val_ex = _validate_data(cfg)
    check_objective(cfg, [part[0] for part in train_parts if len(part)], val_ex)  # it reads the first example
    clock.lap("validate_s")
    model = resolve_model(cfg.model.name, on_status=on_status)  # converts a GGUF once, then cached
    tokenizer = load_tokenizer(model.path, trust_remote_code=cfg.model.trust_remote_code)
    clock.lap("resolve_s")
    data = prepare_sources(
        [(Path(source.path), source.weight) for source in cfg.data.sources()],
        Path(cfg.data.val) if cfg.data.val else None,
        tokenizer,
        None,  # untruncated: max_length may be chosen from these lengths
        cfg.data.template,
        cfg.data.system_prompt,
        cfg.data.val_fraction,
        cfg.train.seed,
        train_examples=train_parts,
        val_examples=val_ex,
    )
    if not data.val:
        raise DataError(
            f"{cfg.data.train_label()}: too few examples to hold out a validation set; add examples or "
            "pass --val FILE"
        )
    clock.lap("tokenize_s")  # a cache hit when this data, tokenizer and template were seen before
    n_params = count_params(model.path, cfg.model.trust_remote_code)
    context = context_length(tokenizer, model.path)
    choices = _resolve(cfg, n_params, data, context)
    if data.split.get("sources"):
        choices.append(_mix_choice(data.split["sources"]))
    max_len = int(cfg.data.max_length or context)
    if max_len > context:
        raise ConfigError(f"data.max_length: {max_len} exceeds the model's context ({context})")
    memory_estimate, checkpointing = _memory_choice(cfg, model.path, n_params, max_len)
    if checkpointing is not None:
        choices.append(checkpointing)
    overlap = window_overlap(max_len, cfg.data.window_overlap)
    windowed = _windows_choice(data, max_len, overlap, cfg.data.window_overlap)
    if windowed is not None:
        choices.append(windowed)
        cfg.data.window_overlap = overlap
    train = fit_length(data.train, data.train_examples, max_len, overlap)
    val = fit_length(data.val, data.val_examples, max_len, overlap)
    if total_loss_tokens(train) == 0:
        raise DataError("no example has a loss-bearing token left after truncation; raise --max-length")
    total = total_steps(float(cfg.train.epochs or 1.0), len(train), int(cfg.train.batch_size or 1), cfg.train.max_steps)
    choices += _resolve_cadence(cfg, total, len(val))
    run_dir = Path(cfg.train.out) if cfg.train.out else default_run_dir()
    cfg.train.out = str(run_dir)
    settings = _settings(cfg)
    indices = eval_subsample(len(val), settings.eval_examples, settings.seed)
    clock.lap("decide_s")
    return Plan(cfg, settings, run_dir, model, tokenizer, data, train, val, n_params, total, tuple(choices), indices,
                clock.laps, memory_estimate)


def _memory_choice(cfg: RunConfig, model_dir: Path, n_params: int, max_len: int) -> tuple[MemoryEstimate, auto.Choice | None]:
    """The step's estimated peak memory, and gradient checkpointing decided from it when on auto
    (on when the estimate without it exceeds HEADROOM of what the device has)."""
    tc = cfg.train
    trainable = memory.trainable_params(model_dir, str(tc.method), cfg.lora, n_params, cfg.model.trust_remote_code)
    compute_bytes = 2 if tc.precision == "bf16" else 4
    four_bit = memory.linear_weights(model_dir, cfg.model.trust_remote_code) if cfg.lora.quantize != "none" else 0
    micro_tokens = int(tc.micro_batch_size or 1) * max_len * (2 if tc.objective == "dpo" else 1)
    dims = memory.shape(model_dir)
    device = pick_device()
    # The fast engine's short attention blocks on CPU keep their probabilities (the reference
    # engine's padded rows attend through SDPA).
    scores = kept_score_bytes(device.type, dims["heads"], max_len, compute_bytes) if tc.engine == "fast" else 0

    def at(checkpointing: bool) -> MemoryEstimate:
        return memory.estimate(n_params, trainable, str(tc.method), compute_bytes, micro_tokens, dims,
                               checkpointing, full_logits=tc.engine == "reference", four_bit=four_bit,
                               score_bytes=scores)

    if tc.gradient_checkpointing is not None:
        return at(tc.gradient_checkpointing), None
    has, plain = memory.device_bytes(device), at(False)
    where = f"{device.type} has {has / 2**30:.1f} GiB" if has else "device memory unknown"
    if has and plain.total > memory.HEADROOM * has:
        cfg.train.gradient_checkpointing = True
        kept = at(True)
        return kept, auto.Choice("train.gradient_checkpointing", True, f"a step needs {plain.describe()} "
                                 f"without it, {kept.total / 2**30:.2f} GiB with it; {where}")
    cfg.train.gradient_checkpointing = False
    return plain, auto.Choice("train.gradient_checkpointing", False, f"a step needs {plain.describe()}; {where}")


def _mix_choice(sources: list[dict[str, Any]]) -> auto.Choice:
    """How several training files share each epoch (what `prepare_sources` drew)."""
    parts = [f"{Path(s['path']).name}: {s['drawn_per_epoch']} of each epoch from {s['train_examples']} "
             f"training examples (weight {s['weight']:g})" for s in sources]
    return auto.Choice("data.train", [s["drawn_per_epoch"] for s in sources],
                       "mixed by weight: " + "; ".join(parts))


def _windows_choice(data: PreparedData, max_len: int, overlap: int, asked: int | None) -> auto.Choice | None:
    """What splitting long raw-text documents makes (None: no document is longer than max_len)."""
    lengths = text_lengths(data.train, data.train_examples) + text_lengths(data.val, data.val_examples)
    long = [n for n in lengths if n > max_len]
    if not long:
        return None
    made = sum(window_count(n, max_len, overlap) for n in long)
    how = "as set" if asked is not None else "auto: an eighth of the window"
    return auto.Choice("data.window_overlap", overlap, f"{len(long)} raw-text document(s) longer than "
                       f"{max_len} tokens split into {made} windows of at most {max_len} tokens, each "
                       f"repeating the previous one's last {overlap} as context without loss ({how}): "
                       "nothing is cut")


def total_steps(epochs: float, n_train: int, batch_size: int, max_steps: int | None) -> int:
    """Optimizer steps of a run: `epochs` passes (the last one may be partial), capped by max_steps."""
    per_epoch = steps_per_epoch(n_train, batch_size)
    total = max(1, math.ceil(epochs * per_epoch - 1e-9))
    return min(total, max_steps) if max_steps is not None else total


# ----------------------------------------------------------------------------- time budget

BUDGET_MAX_EPOCHS = 5.0  # a generous budget on small data still stops here (early stopping guards the rest)
BUDGET_MARGIN = 0.03  # of the budget: the step time measured in a short warm-up drifts a little
WRITE_BYTES_PER_S = 150e6  # a conservative disk write rate for the checkpoint estimate


def checkpoint_bytes(trainable: int) -> int:
    """Bytes a checkpoint writes for `trainable` parameters: fp32 weights and AdamW's two moments."""
    return trainable * 4 * 3


@dataclass(frozen=True)
class Warmup:
    """What a short warm-up measured, for fitting a run into its time budget."""

    step_s: float  # median seconds per optimizer step
    load_s: float  # seconds to load the model (the run pays it again)
    state_bytes: int  # bytes a checkpoint writes (trainable weights and AdamW's two moments)
    spent_s: float  # seconds of the budget already spent (planning and the warm-up)
    eval_s: float | None = None  # seconds per validation example, measured (None: not measured)

    def forward_share(self, batch_size: int) -> float:
        """What an evaluated example costs against a trained one: measured where the warm-up
        timed an evaluation (a LoRA model's forward runs its adapters unmerged, so its share is
        larger than full fine-tuning's), else the rule of thumb (a forward is ~1/3 of a step)."""
        if not self.eval_s or self.step_s <= 0:
            return auto.FORWARD_SHARE
        return min(1.0, max(0.05, self.eval_s / (self.step_s / max(1, batch_size))))


def _budget_steps(plan: Plan, warm: Warmup) -> tuple[int, str]:
    """How many optimizer steps fit in the budget, and the arithmetic behind it."""
    s, budget = plan.settings, float(plan.settings.time_budget_s or 0.0)
    forward_per_example = warm.step_s / max(1, s.batch_size) * warm.forward_share(s.batch_size)
    checkpoint_s = warm.state_bytes / WRITE_BYTES_PER_S
    fixed = warm.spent_s + warm.load_s + checkpoint_s + BUDGET_MARGIN * budget
    # Periodic checkpoints come on top, one per save_interval_s (none when save_every is set).
    per_step = warm.step_s
    if s.save_every is None:
        per_step += warm.step_s * checkpoint_s / s.save_interval_s
    # Validation (the evaluations and the full pass at the end) takes VAL_SHARE of the steps'
    # time, unless its least (the full pass and the fewest evaluations) costs more.
    steps = int((budget - fixed) // (per_step + auto.VAL_SHARE * warm.step_s))
    n_val = len(plan.val)
    least_val_s = auto.validation_cost(n_val, auto.EVAL_MIN_COUNT, min(n_val, auto.EVAL_MIN_EXAMPLES)) \
        * forward_per_example
    if least_val_s > auto.VAL_SHARE * steps * warm.step_s:
        steps = int((budget - fixed - least_val_s) // per_step)
        validation = (f"~{least_val_s:.0f} s of validation (the full pass over {n_val} examples and "
                      f"{auto.EVAL_MIN_COUNT} evaluations: more than {auto.VAL_SHARE:.0%} of the steps)")
    else:
        validation = f"validation (evaluations and the full pass at the end) ~{auto.VAL_SHARE:.0%} of the steps"
    why = (f"{warm.step_s:.2f} s per step (median of a warm-up); {warm.spent_s:.0f} s spent planning and "
           f"warming up, {warm.load_s:.0f} s to load, ~{checkpoint_s:.0f} s per checkpoint, "
           f"{BUDGET_MARGIN:.0%} margin, {validation}")
    if steps < 1:
        raise ConfigError(
            f"train.time_budget: {budget:.0f} s does not fit one optimizer step ({why}); give a "
            "larger --time-budget, or fewer validation examples"
        )
    return steps, why


def fit_budget(cfg: RunConfig, plan: Plan, warm: Warmup) -> Plan:
    """The plan re-decided to end inside `train.time_budget`, from a measured warm-up.

    `cfg` is the user's config (what was on auto there may be re-chosen); epochs, the step
    count (hence the LR schedule's length: its decay ends at the budget) and the evaluation
    cadence follow from how many steps fit. Values the user set are kept, only capped.
    """
    fit, why = _budget_steps(plan, warm)
    tc, s = cfg.train, plan.settings
    per_epoch = steps_per_epoch(len(plan.train), s.batch_size)
    asked = tc.epochs is not None or tc.max_steps is not None
    wanted = plan.total_steps if asked else math.ceil(BUDGET_MAX_EPOCHS * per_epoch)
    total = min(wanted, fit)
    decided = plan.config.model_copy(deep=True)
    decided.train.max_steps = total
    if tc.epochs is None:
        decided.train.epochs = round(total / per_epoch, 4)
    budget = f"{s.time_budget_s:.0f} s"
    if total < wanted:
        reason = (f"{total} of {wanted} steps fit the time budget of {budget}: {why}; the run refits its "
                  f"schedule to the steps' measured pace, up to {wanted} steps")
    else:
        reason = (f"the {wanted} steps asked for fit the time budget of {budget}" if asked else
                  f"{BUDGET_MAX_EPOCHS:g} epochs ({wanted} steps) fit the time budget of {budget}, the most "
                  f"auto trains for; early stopping ends it sooner if validation turns") + f" ({why})"
    choices = [c for c in plan.choices 
               if c.field not in ("train.epochs", "train.eval_every", "train.eval_examples", "train.save_every")]
    choices.append(auto.Choice("train.max_steps", total, reason))
    if tc.epochs is None:
        choices.append(auto.Choice("train.epochs", decided.train.epochs,
                                   f"{total} steps of {s.batch_size} examples over {len(plan.train)} examples"))
    for field_name in ("eval_every", "eval_examples"):
        if getattr(tc, field_name) is None:
            setattr(decided.train, field_name, None)
    choices += _resolve_cadence(decided, total, len(plan.val), warm.forward_share(s.batch_size))
    settings = _settings(decided)
    return dataclasses.replace(
        plan, config=decided, settings=settings, total_steps=total, step_cap=wanted, choices=tuple(choices),
        eval_indices=eval_subsample(len(plan.val), settings.eval_examples, settings.seed),
        timings={**plan.timings, "warmup_s": round(warm.spent_s - sum(plan.timings.values()), 3)},
    )
