"""`tunecraft sweep`: train a small grid of variants and rank them by validation loss.

`--grid lr=1e-4,3e-4 epochs=1,3` is the Cartesian product of the listed values (four runs). Keys
are config keys (`train.lr`) or the short aliases below. Each variant trains into its own run
directory under `--out`; a variant whose run already finished is reused, so an interrupted
sweep continues where it stopped. Variants are ranked by best validation loss (the same held-out
quantity for every variant, unlike training loss), and `sweep.json` records the evidence.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecraft import rundir
from tunecraft.config import build_config
from tunecraft.durable import atomic_write_json
from tunecraft.errors import ConfigError, TunecraftError

ALIASES = {
    "lr": "train.lr",
    "epochs": "train.epochs",
    "r": "lora.r",
    "rank": "lora.r",
    "alpha": "lora.alpha",
    "dropout": "lora.dropout",
    "batch_size": "train.batch_size",
    "method": "train.method",
    "max_steps": "train.max_steps",
    "seed": "train.seed",
}
MAX_VARIANTS = 64  # a grid larger than this is almost always a typo


@dataclass(frozen=True)
class Variant:
    name: str  # also its run directory's name
    values: dict[str, str]  # full config key -> value as typed


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """`lr=1e-4,3e-4` -> ("train.lr", ["1e-4", "3e-4"]); every problem reported at once."""
    axes: list[tuple[str, list[str]]] = []
    problems: list[str] = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key.strip() or not values:
            problems.append(f"--grid {item!r}: expected key=value[,value...], e.g. lr=1e-4,3e-4")
            continue
        full = ALIASES.get(key.strip(), key.strip())
        if any(full == k for k, _ in axes):
            problems.append(f"--grid: {full} given twice")
            continue
        axes.append((full, values))
    if problems:
        raise ConfigError("invalid sweep grid:\n" + "\n".join(problems))
    return axes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def expand(axes: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination, named after the values that vary (`lr=1e-4_epochs=3`)."""
    combos = list(itertools.product(*[values for _, values in axes]))
    if len(combos) > MAX_VARIANTS:
        raise ConfigError(f"the grid has {len(combos)} variants (at most {MAX_VARIANTS}); narrow it")
    varying = [i for i, (_, values) in enumerate(axes) if len(values) > 1]
    out = []
    for combo in combos:
        values = {key: combo[i] for i, (key, _) in enumerate(axes)}
        parts = [f"{axes[i][0].split('.')[-1]}={_slug(combo[i])}" for i in varying]
        out.append(Variant("_".join(parts) or "single", values))
    return out


def _validate(config: str | None, variants: list[Variant], out: Path) -> None:
    """Build every variant's config before training any: a bad value fails the sweep in seconds."""
    problems = []
    for v in variants:
        try:
            build_config(config, [f"{k}={x}" for k, x in v.values.items()], {"train.out": str(out / v.name)})
        except ConfigError as exc:
            problems.append(f"{v.name}: {exc}")
    if problems:
        raise ConfigError("\n".join(problems))


def _row(v: Variant, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    verdict = summary.get("verdict") or {}
    return {
        "name": v.name, "values": v.values, "run_dir": str(run_dir),
        "status": summary.get("status"), "message": summary.get("message", ""),
        "best_val_loss": summary.get("best_val_loss"), "best_step": summary.get("best_step"),
        "final_train_loss": summary.get("final_train_loss"), "steps": summary.get("steps"),
        "wall_s": summary.get("wall_s"), "verdict": verdict.get("status"),
    }


def _finished(run_dir: Path) -> dict[str, Any] | None:
    summary = rundir.read_summary(run_dir)
    return summary if summary.get("status") in ("finished", "early_stopped") else None


def _train_variant(config: str | None, v: Variant, run_dir: Path, console: Any) -> dict[str, Any]:
    from tunecraft.train.loop import build, train

    done = _finished(run_dir)
    if done is not None:
        return done
    cfg = build_config(config, [f"{k}={x}" for k, x in v.values.items()], {"train.out": str(run_dir)})
    try:
        plan, rt = build(cfg, on_status=console.print if console else None)
        return train(plan, rt, resume=rundir.has_run(run_dir), console=console).summary
    except TunecraftError as exc:  # one diverging variant must not sink the sweep
        return {"status": "failed", "message": str(exc)}


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best validation loss first; failed or unevaluated variants last."""
    def key(row: dict[str, Any]) -> float:
        loss = row.get("best_val_loss")
        return loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf

    return sorted(rows, key=key)


def _evidence(ranked: list[dict[str, Any]]) -> str:
    best = ranked[0]
    if best.get("best_val_loss") is None:
        return "no variant produced a validation loss"
    line = f"best: {best['name']} with validation loss {best['best_val_loss']:.4f} at step {best['best_step']}"
    if len(ranked) > 1 and ranked[1].get("best_val_loss") is not None:
        line += f" (next: {ranked[1]['name']} at {ranked[1]['best_val_loss']:.4f})"
    return line


def run_sweep(
    config: str | None,
    grid: list[str],
    out: Path,
    console: Any = None,
    on_variant: Callable[[int, int, Variant], None] | None = None,
) -> dict[str, Any]:
    """Train every variant, rank them, write OUT/sweep.json and return it."""
    variants = expand(parse_grid(grid))
    _validate(config, variants, out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, v in enumerate(variants):
        if on_variant:
            on_variant(i, len(variants), v)
        run_dir = out / v.name
        rows.append(_row(v, run_dir, _train_variant(config, v, run_dir, console)))
    ranked = rank(rows)
    result = {
        "config": config, "grid": dict(parse_grid(grid)), "ranked_by": "best_val_loss",
        "best": ranked[0]["name"] if ranked and ranked[0].get("best_val_loss") is not None else None,
        "evidence": _evidence(ranked), "variants": ranked,
    }
    atomic_write_json(out / "sweep.json", result, indent=1)
    return result


def sweep_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="sweep, ranked by best validation loss", title_justify="left")
    for col in ("rank", "variant", "val loss", "best step", "train loss", "verdict", "status", "time"):
        table.add_column(col, justify="right" if col in ("rank", "val loss", "best step", "train loss", "time") else "left")
    for i, row in enumerate(result["variants"], 1):
        fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
        table.add_row(
            str(i), row["name"], fmt(row["best_val_loss"]), str(row["best_step"] or "-"),
            fmt(row["final_train_loss"]), str(row["verdict"] or "-"), str(row["status"]),
            "-" if row["wall_s"] is None else f"{row['wall_s']:.0f} s",
            style="bold green" if row["name"] == result["best"] else None,
        )
    return table
