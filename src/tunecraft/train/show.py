"""What `tunecraft train` prints: the plan (with the reasons for auto settings) and the outcome."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tunecraft.curves import print_verdict
from tunecraft.out import escape
from tunecraft.train.plan import Plan


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 90:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def print_plan(plan: Plan, console: Console, trainable: int | None = None, step_s: float | None = None,
               peak_bytes: int | None = None) -> None:
    cfg, s = plan.config, plan.settings
    table = Table(title="training plan", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", escape(f"{s.base_model} ({plan.n_params / 1e6:.1f}M parameters) at {plan.model.path}"))
    dpo = f", DPO on preference pairs (beta {s.dpo_beta:g})" if s.objective == "dpo" else ""
    table.add_row("method", s.method + dpo + (f", {trainable:,} trainable parameters" if trainable else ""))
    table.add_row("data", f"{len(plan.train)} train / {len(plan.val)} validation examples "
                  f"({'file ' + str(cfg.data.val) if cfg.data.val else 'seeded split of train'})")
    table.add_row("tokens", f"{plan.train_tokens:,} per epoch, {plan.train_loss_tokens:,} loss-bearing")
    table.add_row("steps", f"{plan.total_steps} optimizer steps of {s.batch_size} examples "
                  f"({s.epochs:g} epochs), eval every {s.eval_every}")
    table.add_row("optimizer", f"AdamW lr {s.lr:g}, {s.schedule} after "
                  f"{s.warmup_ratio:.0%} warmup, clip {s.grad_clip}")
    table.add_row("engine", f"{s.engine}, precision {s.precision}, max length {s.max_length}")
    if step_s is not None:
        table.add_row("estimate", f"~{_fmt_duration(step_s * plan.total_steps)} "
                      f"({step_s:.2f} s per step, measured)")
    if plan.memory is not None:
        checkpointing = ", gradient checkpointing" if plan.memory.checkpointing else ""
        measured = f"; measured peak after a warm-up {peak_bytes / 2**30:.2f} GiB" if peak_bytes else ""
        table.add_row("memory", f"estimated peak {plan.memory.describe()}{checkpointing}{measured}")
    if plan.timings:
        table.add_row("prepared", f"in {sum(plan.timings.values()):.1f} s ("
                      + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in plan.timings.items()) + ")")
    table.add_row("run dir", escape(str(plan.run_dir)))
    console.print(table)
    if plan.choices:
        console.print("[bold]auto settings[/] (override any with key=value):")
        for choice in plan.choices:
            console.print(f"  {choice.field} = {escape(str(choice.value))}  [dim]# {escape(choice.reason)}[/]", highlight=False)


def plan_json(plan: Plan, step_s: float | None = None, peak_bytes: int | None = None) -> dict[str, Any]:
    """The plan as `train --dry-run --json` prints it (what the dashboard's New job page shows)."""
    s = plan.settings
    return {
        "base_model": s.base_model, "n_params": plan.n_params, "method": s.method, "objective": s.objective,
        "train_examples": len(plan.train), "val_examples": len(plan.val),
        "train_tokens": plan.train_tokens, "loss_tokens": plan.train_loss_tokens,
        "total_steps": plan.total_steps, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
        "schedule": s.schedule, "max_length": s.max_length, "eval_every": s.eval_every,
        "precision": s.precision, "engine": s.engine, "time_budget_s": s.time_budget_s,
        "step_s": step_s, "estimated_s": step_s * plan.total_steps if step_s is not None else None,
        "estimate": f"~{_fmt_duration(step_s * plan.total_steps)}" if step_s is not None else None,
        "choices": [{"field": c.field, "value": c.value, "reason": c.reason} for c in plan.choices],
        "memory": {**plan.memory.to_json(), "measured_peak": peak_bytes} if plan.memory is not None else None,
    }


def print_outcome(summary: dict[str, Any], run_dir: Any, console: Console) -> None:
    status = summary["status"]
    colour = {"finished": "green", "early_stopped": "green", "interrupted": "yellow"}.get(status, "red")
    console.print(f"[bold {colour}]{status}[/]: {summary.get('message', '')}")
    if summary.get("best_val_loss") is not None:
        console.print(
            f"  best validation loss {summary['best_val_loss']:.4f} at step {summary['best_step']}; "
            f"final train loss {summary['final_train_loss']:.4f}; {summary['wall_s']:.0f} s, "
            f"{summary['tokens_per_s'] or 0:,.0f} tokens/s"
        )
    if summary.get("linear_kernels"):
        console.print(f"  linear layers: {summary['linear_kernels']}", highlight=False)
    if summary.get("verdict"):
        print_verdict(summary["verdict"], console)
    console.print(f"  run directory: {run_dir}")
    console.print(f"  chat with it:  tunecraft chat {run_dir}")
    console.print(f"  serve it:      tunecraft serve {run_dir}")
