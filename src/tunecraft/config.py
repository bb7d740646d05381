"""Typed configuration tree: one pydantic model per concern, YAML in/out, dotted overrides.

The resolved config written to a run directory is everything needed to reproduce the run.
Field descriptions double as CLI help. Values left as `None` mean "auto": `train.auto`
fills them from the data and the machine and says why.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunecraft.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|min|s)?", re.IGNORECASE)
_UNIT_S = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in "30m", "1h30m", "90s", "1.5h" or a plain number of seconds; ValueError otherwise."""
    cleaned = text.strip().lower().replace(" ", "")
    parts = list(_DURATION.finditer(cleaned))
    if not cleaned or "".join(m.group(0) for m in parts) != cleaned:
        raise ValueError(f"{text!r} is not a duration: write e.g. 30m, 1h30m, 90s or 1800")
    return sum(float(m.group(1)) * _UNIT_S[(m.group(2) or "")] for m in parts)


class _Section(BaseModel):
    # Unknown keys are mistakes (a typo in a YAML file must not be silently ignored).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field(DEFAULT_MODEL, description="Model: registry name, local HF dir, .gguf file or Hub id.")
    trust_remote_code: bool = Field(False, description="Allow a model's own Python code to run (off by default).")


class DataSource(_Section):
    """One of several training files, with its share of each epoch."""

    path: str = Field(description="Data file (JSONL or CSV, either may be gzipped).")
    weight: float = Field(1.0, gt=0, description="Relative share of each epoch drawn from this file.")


class DataConfig(_Section):
    train: str | list[DataSource] | None = Field(
        None, description="Training data file (JSONL or CSV, either may be gzipped), or several as "
        "[{path, weight}] mixed by weight: each epoch draws weight/total of its examples from each file.")
    val: str | None = Field(None, description="Validation data file; default: a seeded split of train.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of train held out when no val file is given.")
    max_length: int | None = Field(None, gt=8, description="Max tokens per example (auto: from the data).")
    window_overlap: int | None = Field(
        None, ge=0, description="Raw-text documents longer than max_length are split into windows of "
        "max_length tokens, each repeating this many tokens of the previous one as context (no loss on "
        "them; auto: max_length / 8, at most half a window).",
    )
    template: Literal["auto", "chat", "raw"] = Field(
        "auto",
        description="How prompt/completion and instruction rows are rendered: 'chat' uses the model's "
        "chat template (what `chat` and `serve` use), 'raw' concatenates; auto = chat when the model has one.",
    )
    system_prompt: str | None = Field(None, description="System message added to rows that have none.")
    @field_validator("train", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """A list of plain paths means weight 1 each; a list of one file is that file."""
        if isinstance(value, list):
            value = [{"path": v} if isinstance(v, str) else v for v in value]
            if len(value) == 1 and isinstance(value[0], dict) and set(value[0]) <= {"path", "weight"}:
                return value[0].get("path")
        return value

    def sources(self) -> list[DataSource]:
        """The training files with their weights (one file: weight 1)."""
        if self.train is None:
            return []
        return [DataSource(path=self.train)] if isinstance(self.train, str) else list(self.train)

    def train_label(self) -> str:
        """The training data as a person reads it: the file, or each file with its weight."""
        sources = self.sources()
        if len(sources) == 1:
            return sources[0].path
        return ", ".join(f"{s.path} (weight {s.weight:g})" for s in sources)

    reject_label: str | None = Field(
        None, description="The label meaning 'none of the others' in a closed-label task (auto: "
        "out_of_scope or other when the label set has one): answers below a confidence threshold, "
        "calibrated on validation, become it.",
    )


class LoraConfig(_Section):
    # Measured (docs/quality.md): on 900 BANKING77 messages under the same 6-minute budget, rank
    # 64 (alpha 128, the same scale 2) reached 0.828 test accuracy against rank 16's 0.790
    # (paired McNemar p 0.04), for ~4% more time per step.
    r: int = Field(64, ge=1, le=1024, description="LoRA rank (64: measured better than 16 on a "
                   "real routing task for ~4% more time per step; docs/quality.md).")
    alpha: float = Field(128.0, gt=0, description="LoRA alpha (scale = alpha / r; the default keeps scale 2).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' (every linear layer but lm_head)."
    )
    use_rslora: bool = Field(False, description="rsLoRA: scale = alpha / sqrt(r) instead of alpha / r, so "
                             "a higher rank keeps learning instead of shrinking its own update.")
    use_dora: bool = Field(False, description="DoRA: learn each weight's magnitude apart from its LoRA "
                           "direction (peft); closer to full fine-tuning, slower per step.")
    quantize: Literal["none", "nf4"] = Field(
        "none", description="QLoRA: 'nf4' keeps the frozen base's linear weights in 4 bits (bitsandbytes, "
        "on CUDA or CPU; ~0.52 byte per weight instead of 2-4) and trains the adapters over them. The "
        "adapter is a plain PEFT adapter over the original model; merged exports use its full-precision "
        "weights. Needs bitsandbytes and accelerate (tunecraft's qlora extra).")


class DpoConfig(_Section):
    beta: float = Field(0.1, gt=0, le=10, description="DPO beta: how far the tuned model may move from the "
                        "reference (lower: further).")
    sft_weight: float = Field(0.0, ge=0, le=10, description="Weight of the chosen answers' supervised "
                              "cross-entropy added to the DPO loss (0: pure DPO).")


class TrainConfig(_Section):
    method: Literal["auto", "lora", "full"] = Field(
        "auto", description="lora or full fine-tuning (auto: from model size); --method dpo means "
        "train.objective=dpo (preference tuning, with LoRA or full weights as train.method says).")
    objective: Literal["sft", "dpo"] = Field(
        "sft", description="sft: learn the answers (supervised); dpo: learn which answer of a "
        "preference pair is better (needs preference data).")
    dpo: DpoConfig = Field(default_factory=DpoConfig, description="Preference tuning (train.objective=dpo).")
    epochs: float | None = Field(None, gt=0, description="Passes over the training data (auto: from data size).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (null: when the epochs end).")
    time_budget: float | None = Field(
        None, gt=0, description="Wall-clock budget for the whole run, e.g. 30m, 1h30m, 900s (stored in "
        "seconds): a warm-up measures the step time, then epochs, evaluations and the LR schedule are "
        "fitted so the run ends inside it (null: no budget).",
    )
    lr: float | None = Field(None, gt=0, lt=1, description="Peak learning rate (auto: from method).")
    lr_multiplier: float = Field(
        1.0, gt=0, le=10, description="Scales the learning rate, auto or given (OpenAI's learning_rate_multiplier)."
    )
    batch_size: int | None = Field(None, ge=1, description="Examples per optimizer step (auto).")
    micro_batch_size: int | None = Field(None, ge=1, description="Examples per forward pass; the rest is accumulated (auto: ~4k tokens per pass on CPU).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the LR.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay after warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global gradient norm to this (None: off).")
    seed: int = Field(42, description="Seed for data order, split, init of LoRA weights.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N optimizer steps (auto: ~10 evals).")
    save_every: int | None = Field(
        None, ge=1, description="Checkpoint every N steps (auto: by wall clock, every train.save_interval_s, and at the end)."
    )
    save_interval_s: float = Field(
        600.0, gt=0, description="With save_every on auto: seconds of training between checkpoints."
    )
    eval_examples: int | None = Field(
        None, ge=1, description="Validation examples scored at each evaluation (auto: sized to ~5% of the "
        "run's compute, at least 32); the last step also scores all of them."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (newest and best are kept).")
    patience: int | None = Field(3, ge=1, description="Early stop after N evals without improvement (None: off).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Compute precision (auto: bf16 where fast).")
    deterministic: bool = Field(False, description="Bit-reproducible mode (fp32, deterministic kernels).")
    engine: Literal["fast", "reference"] = Field(
        "fast",
        description="'fast' (flat packed rows with per-example attention, shared prompt prefix computed "
        "once, LM head on answer tokens only) or 'reference' (padded batches, full logits: the yardstick).",
    )
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each decoder layer's activations in the backward pass instead of "
        "keeping them: less memory, ~30% more compute (auto: on when the plan's memory estimate exceeds "
        "what the device has).",
    )
    compile: bool | None = Field(
        None, description="torch.compile each decoder layer (auto: off; measured ~4% faster on CPU for ~50 s of compiling)."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads per process (auto: physical cores / local processes).")
    sharding: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Multi-process mode: 'ddp' replicates the model, 'fsdp' shards it (FSDP2) for larger models."
    )
    out: str | None = Field(None, description="Run directory (default: runs/<timestamp>).")

    @field_validator("time_budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class EvalConfig(_Section):
    baselines: list[Literal["base", "prompted"]] = Field(["base", "prompted"], description="Baselines to compare.")
    limit: int | None = Field(None, ge=1, description="Evaluate at most N examples.")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per answer.")
    batch_size: int = Field(8, ge=1, description="Generation batch size.")
    few_shot: int = Field(3, ge=0, description="Few-shot examples in the prompted baseline.")
    prompt_file: str | None = Field(None, description="Your own system prompt for the prompted baseline.")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address (anything but loopback needs an API key).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    # A secret: never dumped (config.yaml is copied and shared with runs) and never shown in a repr.
    api_key: str | None = Field(
        None, exclude=True, repr=False, description="Bearer key required on every route but /health (never written to config.yaml)."
    )


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)


# A number as people type it (1e-4, -3, .5, 2.0E+3); YAML 1.1 reads the exponent forms as
# strings. Words like "inf" or "nan" stay strings: they are more likely names than numbers.
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the config section at `loc` (for "did you mean" hints)."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        line = f"{where}: {e['msg']} (got {e.get('input')!r})"
        if e["type"] == "extra_forbidden":
            fields = _known_fields(e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields)}"
            line += f"; {hint}"
        lines.append(line)
    return lines


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 0.0001); the value is read by `_parse_value`."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {item!r}: empty key")
    return path, _parse_value(raw)


_NULLS = ("null", "Null", "NULL", "~")


def _parse_value(raw: str) -> Any:
    """A YAML scalar or list (`1e-4`, `true`, `null`, `[q_proj, v_proj]`), else the text itself.

    Free text stays text: YAML would turn `Answer: briefly` into a mapping, `#1 tip` into
    null (a comment), and `[oops` into a parse error.
    """
    text = raw.strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, dict) or (value is None and text not in _NULLS):
        return text
    # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers people type should be numbers.
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return value


def _set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if node.get(part) is None:  # absent, or an empty section (`train:` in YAML)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def build_config(
    yaml_path: str | Path | None = None,
    overrides: list[str] | None = None,
    values: dict[str, Any] | None = None,
) -> RunConfig:
    """YAML file, then `values` (dotted keys from CLI flags), then `key=value` overrides.

    Every problem is reported at once in one ConfigError.
    """
    tree = _read_yaml(Path(yaml_path)) if yaml_path is not None else {}
    problems: list[str] = []
    assignments = [(key.split("."), v) for key, v in (values or {}).items() if v is not None]
    for item in overrides or []:
        try:
            assignments.append(parse_override(item))
        except ConfigError as exc:  # reported together with the validation errors below
            problems.append(str(exc))
    for path_parts, value in assignments:
        try:
            _set_dotted(tree, path_parts, value)
        except ConfigError as exc:
            problems.append(str(exc))
    # An empty section in YAML (`train:` with every key commented out) means "all defaults".
    tree = {k: ({} if v is None and k in RunConfig.model_fields else v) for k, v in tree.items()}
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        problems += _format_validation_error(err)
    if problems:
        where = f"{yaml_path}: " if yaml_path is not None else ""
        raise ConfigError(f"{where}invalid configuration:\n" + "\n".join(problems))
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    """The YAML file as a tree of sections; file-level problems stop here (nothing to validate)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, train:, ...)")
    return loaded


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (the run directory's config.yaml)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def load_config(path: Path) -> RunConfig:
    """Read a config.yaml written by `dump_config`."""
    return build_config(path)


def _field(key: str) -> Any:
    """The pydantic FieldInfo of a dotted key (`train.lr`, `train.dpo.beta`)."""
    *sections, name = key.split(".")
    model: Any = RunConfig
    for section in sections:
        model = model.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), key
    return model.model_fields[name]


def describe(key: str) -> str:
    """A setting's description: the one text behind the config, the CLI help and the docs."""
    description = _field(key).description
    assert description, f"{key} has no description"
    return description


def settings_help(sections: tuple[str, ...] = ("model", "data", "lora", "train")) -> list[tuple[str, str]]:
    """(`key=DEFAULT`, description) for every setting of `sections`, for `train --help`."""
    rows = []
    for section in sections:
        model = RunConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        rows += _section_help(section, model)
    return rows


def _section_help(prefix: str, model: type[BaseModel]) -> list[tuple[str, str]]:
    """Rows of one section; a nested section (train.dpo) lists its own keys."""
    rows = []
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            rows += _section_help(f"{prefix}.{name}", type(default))
            continue
        if default is None:
            shown = "auto" if "auto" in (info.description or "") else "null"
        else:
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append((f"{prefix}.{name}={shown}", info.description or ""))
    return rows
