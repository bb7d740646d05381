"""What a run's learning curves say: healthy, underfitting, overfitting or memorizing.

The verdict reads only the run directory (train loss per step and validation loss per eval in
`metrics.jsonl`, the settings in `config.yaml`, the checkpoints kept), so training writes it
into `summary.json` the moment it ends and `tunecraft eval` recomputes it beside the test
results. It belongs to the run directory's contract, not to a stage: both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunecraft import rundir
from tunecraft.out import escape

Status = Literal["healthy", "underfitting", "overfitting", "memorizing", "unknown"]

# Validation loss has "turned" when its last value is this much above its minimum, relative...
RISE_REL = 0.05
# ...and absolute (nats/token): tiny losses make relative changes noisy.
RISE_ABS = 0.01
# Training loss this low (nats/token) means the model reproduces its training answers verbatim.
NEAR_ZERO = 0.05
# Still learning fast at the end: the last evaluation improved validation loss by this much...
STILL_FALLING = 0.03
# ...or the last three evaluations each improved on the one before, by this much in all.
STILL_FALLING_3 = 0.02
# Training loss that fell by less than this share did not learn much.
BARELY_MOVED = 0.10


@dataclass
class Verdict:
    status: Status
    message: str  # one line, for the terminal and the report
    best_step: int | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    onset_step: int | None = None  # overfitting/memorizing: the step where validation turned
    onset_epoch: float | None = None
    recommended: dict[str, Any] = field(default_factory=dict)  # step, path, reason
    suggestions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunSettings:
    """The few config values the suggestions quote (all optional)."""

    method: str | None = None
    lr: float | None = None
    epochs: float | None = None
    lora_r: int | None = None
    out: str | None = None  # the run directory (the command that continues it)


def _smoothed_tail(values: list[float]) -> float:
    """Mean of the last ~10% (1 to 5) of values: one noisy step should not decide."""
    n = max(1, min(5, len(values) // 10))
    return sum(values[-n:]) / n


def _smoothed_head(values: list[float]) -> float:
    n = max(1, min(5, len(values) // 10))
    return sum(values[:n]) / n


def _epoch_at(train_rows: list[dict[str, Any]], step: int) -> float | None:
    for row in train_rows:
        if int(row.get("step", -1)) == step and "epoch" in row:
            return float(row["epoch"])
    return None


def _classify(train: list[float], evals: list[tuple[int, float]]) -> tuple[Status, int]:
    """Status and the index of the best evaluation."""
    best_i = min(range(len(evals)), key=lambda i: evals[i][1])  # first minimum
    best, final = evals[best_i][1], evals[-1][1]
    rise = final - best
    if best_i < len(evals) - 1 and rise > RISE_ABS and rise > RISE_REL * abs(best):
        near_zero = bool(train) and _smoothed_tail(train) < NEAR_ZERO
        return ("memorizing" if near_zero else "overfitting"), best_i
    if best_i == len(evals) - 1:
        previous = evals[-2][1] if len(evals) >= 2 else final
        drop = previous - final
        # Relative and absolute: 0.0118 -> 0.0106 is 10% but nothing left to learn.
        still_falling = (drop > STILL_FALLING * abs(previous) and drop > RISE_ABS) or _falling_steadily(evals)
        barely_moved = bool(train) and _smoothed_tail(train) > (1 - BARELY_MOVED) * _smoothed_head(train)
        if still_falling or barely_moved:
            return "underfitting", best_i
    return "healthy", best_i


def _falling_steadily(evals: list[tuple[int, float]]) -> bool:
    """The last three evaluations each lower than the one before, and clearly lower in all."""
    if len(evals) < 3:
        return False
    a, b, c = (v for _, v in evals[-3:])
    return a > b > c and a - c > STILL_FALLING_3 * abs(a) and a - c > RISE_ABS


def _suggestions(status: Status, s: RunSettings, onset_epoch: float | None) -> list[str]:
    lora = s.method == "lora"
    if status in ("overfitting", "memorizing"):
        out = []
        if onset_epoch is not None:
            out.append(f"fewer epochs: validation loss turned at epoch {onset_epoch:.2f} "
                       f"(try train.epochs={max(1, math.ceil(onset_epoch))})")
        else:
            out.append("fewer epochs")
        out.append(f"a lower learning rate (train.lr={s.lr / 2:g})" if s.lr else "a lower learning rate")
        out.append("more (or more varied) training data")
        if lora:
            out.append(f"a smaller LoRA rank (lora.r={max(1, s.lora_r // 2)})" if s.lora_r else "a smaller LoRA rank")
        elif s.method == "full":
            out.append("LoRA instead of full fine-tuning (far fewer trainable parameters)")
        if status == "memorizing":
            out.append("dropout on the adapters (lora.dropout=0.1)" if lora else "weight decay (train.weight_decay=0.1)")
        return out
    if status == "underfitting":
        more = f"{s.epochs * 2:g}" if s.epochs else "N"
        return [
            *([f"continue this run for more epochs: tunecraft train --resume --out {s.out} --epochs {more}"]
              if s.out else []),
            f"more epochs (train.epochs={s.epochs * 2:g})" if s.epochs else "more epochs",
            f"a higher learning rate (train.lr={s.lr * 2:g})" if s.lr else "a higher learning rate",
            *([f"a larger LoRA rank (lora.r={s.lora_r * 2})"] if lora and s.lora_r else []),
        ]
    return []


def _recommend(best_step: int, final_step: int, best_val: float, checkpoints: set[int]) -> dict[str, Any]:
    path = "model/"
    if best_step == final_step:
        reason = f"the final step {best_step} has the lowest validation loss ({best_val:.4f})"
    else:
        reason = (f"lowest validation loss ({best_val:.4f}); model/ already holds this step, "
                  f"not the final step {final_step}")
    ckpt = f"checkpoints/step-{best_step:06d}" if best_step in checkpoints else None
    return {"step": best_step, "path": path, "checkpoint": ckpt, "reason": reason}


def _message(status: Status, v: Verdict) -> str:
    if status == "overfitting":
        return (f"overfitting: validation loss turned at step {v.onset_step} ({v.best_val_loss:.4f}) "
                f"and rose to {v.final_val_loss:.4f} while training loss kept falling")
    if status == "memorizing":
        return (f"memorizing: training loss is near zero ({v.final_train_loss:.4f}) while validation "
                f"loss rose from {v.best_val_loss:.4f} (step {v.onset_step}) to {v.final_val_loss:.4f}")
    if status == "underfitting":
        return (f"underfitting: validation loss was still falling at the end ({v.final_val_loss:.4f}); "
                "the model has more to learn")
    return (f"healthy: validation loss reached {v.best_val_loss:.4f} at step {v.best_step} "
            f"and did not turn up")


def overfitting_verdict(
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    settings: RunSettings = RunSettings(),
    checkpoints: set[int] | None = None,
) -> Verdict:
    """The verdict from metric rows ("train": step, loss[, epoch]; "eval": step, val_loss)."""
    evals = [(int(r["step"]), float(r["val_loss"])) for r in eval_rows
             if r.get("val_loss") is not None and math.isfinite(float(r["val_loss"]))]
    train = [float(r["loss"]) for r in train_rows if r.get("loss") is not None]
    if not evals:
        return Verdict("unknown", "no validation evaluations were recorded; cannot judge the curves",
                       final_train_loss=_smoothed_tail(train) if train else None)
    status, best_i = _classify(train, evals)
    v = Verdict(
        status, "",
        best_step=evals[best_i][0],
        best_val_loss=evals[best_i][1],
        final_val_loss=evals[-1][1],
        final_train_loss=_smoothed_tail(train) if train else None,
    )
    if status in ("overfitting", "memorizing"):
        v.onset_step = v.best_step
        v.onset_epoch = _epoch_at(train_rows, evals[best_i][0])
    v.message = _message(status, v)
    v.recommended = _recommend(evals[best_i][0], evals[-1][0], evals[best_i][1], checkpoints or set())
    v.suggestions = _suggestions(status, settings, v.onset_epoch)
    return v


def run_verdict(run_dir: Path) -> Verdict:
    """The overfitting verdict of a run directory (metrics.jsonl, config.yaml, checkpoints/)."""
    rows = rundir.read_metrics(run_dir)
    settings = RunSettings()
    if rundir.has_run(run_dir):
        cfg = rundir.read_config(run_dir)
        settings = RunSettings(cfg.train.method, cfg.train.lr, cfg.train.epochs, cfg.lora.r, str(run_dir))
    return overfitting_verdict(
        [r for r in rows if r.get("type") == "train"],
        [r for r in rows if r.get("type") == "eval"],
        settings,
        rundir.checkpoint_steps(run_dir),
    )


def print_verdict(verdict: dict[str, Any], console: Any) -> None:
    """The verdict's lines on a rich console (printed by `train` at the end and by `eval`)."""
    colour = {"healthy": "green", "underfitting": "yellow"}.get(verdict["status"], "red")
    console.print(f"  [bold {colour}]{escape(verdict['message'])}[/]", highlight=False)
    rec = verdict.get("recommended") or {}
    if rec:
        console.print(f"  recommended: step {rec['step']} ({rec.get('checkpoint') or rec['path']}): "
                      f"{rec['reason']}", markup=False, highlight=False)
    if verdict.get("suggestions"):
        console.print("  try: " + "; ".join(verdict["suggestions"]), markup=False, highlight=False)
    for note in verdict.get("notes") or []:
        console.print(f"  note: {note}", markup=False, highlight=False)
