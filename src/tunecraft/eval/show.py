"""What `tunecraft eval` prints: the comparison table, the verdicts and where the report is."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from tunecraft.curves import print_verdict
from tunecraft.out import escape


SHORT = {"accuracy": "acc", "token_f1": "F1"}  # column headers that fit an 80-column terminal


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def comparison_table(payload: dict[str, Any]) -> Table:
    kind = payload["answer_kind"]
    main = payload["main_metric"]
    table = Table(title=f"{payload['examples']} held-out examples from {payload['data']}", title_justify="left")
    table.caption = "exact: normalized exact match; F1: token F1; R-L: ROUGE-L; JSON: valid-JSON rate; mF1: macro-F1"
    table.add_column("system", style="bold", no_wrap=True)
    table.add_column(f"{SHORT.get(main, main)} [95% CI]", justify="right", no_wrap=True)
    for header in ["exact", "F1", "R-L"]:
        table.add_column(header, justify="right")
    if kind["kind"] == "json":
        table.add_column("JSON", justify="right")
    if kind["labels"]:
        table.add_column("mF1", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("ppl", justify="right")
    for name, s in payload["systems"].items():
        m, iv = s["metrics"], s["main"]
        row = [name, f"{iv['mean']:.2f} [{iv['low']:.2f},{iv['high']:.2f}]",
               _f(m["exact_match"], 2), _f(m["token_f1"], 2), _f(m["rouge_l"], 2)]
        if kind["kind"] == "json":
            row.append(_f(m.get("valid_json_rate"), 2))
        if kind["labels"]:
            row.append(_f(m.get("macro_f1"), 2))
        row += [_f(s["loss"], 2), _f(s["perplexity"], 1)]
        table.add_row(*row, style="magenta" if name == "tuned" else None)
    return table


def print_eval(payload: dict[str, Any], console: Console) -> None:
    if payload.get("kind") == "text":  # raw documents: held-out loss, base against tuned
        from tunecraft.eval.text import print_text

        print_text(payload, console)
        return
    if payload.get("kind") == "preference":  # a DPO run scored on held-out pairs
        from tunecraft.eval.preference import print_preference

        print_preference(payload, console)
        return
    console.print(comparison_table(payload))
    comp = payload["comparison"]
    for name, d in comp["diff"].items():
        mark = "[green]beyond the interval[/]" if comp["beyond_interval"][name] else "[yellow]within the interval[/]"
        console.print(f"  tuned - {name}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {mark}", highlight=False)
    flips = comp["flips"]
    if flips.get("against"):
        console.print(f"  against {flips['against']}: tuning fixed {len(flips['fixed'])} and broke "
                      f"{len(flips['broken'])} examples", markup=False, highlight=False)
    for line in task_lines(payload):
        console.print(f"  {line}", markup=False, highlight=False)
    print_verdict(payload["verdict"], console)
    ship = payload["ship"]
    console.print(f"[bold {'green' if ship['ship'] else 'red'}]{escape(ship['line'])}[/]", highlight=False)
    if payload.get("report"):
        console.print(f"  report: {payload['report']}", markup=False, highlight=False)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def task_lines(payload: dict[str, Any]) -> list[str]:
    """Closed labels, the classical baseline, rejection and general abilities, one line each."""
    lines = []
    labels = payload.get("labels")
    if labels:
        how = "constrained to" if labels["constrained"] else "free text (--no-label-constraint), scored against"
        invalid = ", ".join(f"{n} {v}" for n, v in labels["invalid_labels"].items())
        lines.append(f"answers {how} the run's {labels['count']} labels; invalid labels: {invalid}")
    classical = payload.get("classical")
    if classical:
        m = classical["main"]
        lines.append(f"TF-IDF + LR (trained on the same {classical['train_examples']} rows): accuracy "
                     f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]; {classical['line']}")
    reject = payload.get("reject")
    if reject:
        w, wo = reject["test"]["with"], reject["test"]["without"]
        lines.append(f"reject {reject['reject_label']!r} below p={reject['threshold']:.3f} (chosen on validation): test "
                     f"in-scope accuracy {_pct(wo['in_scope_accuracy'])} -> {_pct(w['in_scope_accuracy'])}, reject recall "
                     f"{_pct(wo['reject_recall'])} -> {_pct(w['reject_recall'])} ({reject['test']['reject_examples']} reject examples)")
    general = payload.get("general")
    if general:
        lines.append(general["line"])
    return lines
