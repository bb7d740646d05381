"""Held-out raw text: does the tuned model predict the user's documents better than the base?

A raw-text run (domain adaptation: `{"text": ...}` documents) has no answer to generate and
compare, so `tunecraft eval RUN --data HELDOUT.jsonl` scores what it was trained for: the
cross-entropy of held-out documents, every token bearing loss, long documents as the windows
training would make of them (the model's context, an eighth of it overlapping as context
without loss, so every token is scored once). Per system (the base model and the tuned one;
the same tokenizer, so the same tokens): loss, perplexity and next-token accuracy. Tuned minus
base is a paired difference with a bootstrap interval over documents (a ratio: resampled loss
sums over resampled token counts), so one long document cannot pass for many.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunecraft import rundir
from tunecraft.curves import run_verdict
from tunecraft.data.schema import Example
from tunecraft.eval.bootstrap import bootstrap_ratio
from tunecraft.eval.heldout import heldout_loss, tokenize_for
from tunecraft.out import escape


def all_text(examples: Sequence[Example]) -> bool:
    """Whether every example of a data file is raw text (nothing to generate, only to score)."""
    return bool(examples) and all(e.format == "text" for e in examples)


def document_sums(lm: Any, examples: Sequence[Example], batch_size: int) -> tuple[dict[str, float], list[tuple[float, int]]]:
    """`lm`'s held-out metrics on the documents and each document's (loss sum, scored tokens),
    its windows added together, in document order."""
    windows = tokenize_for(lm, list(examples))
    held = heldout_loss(lm, windows, batch_size=batch_size, per_example=True)
    per_doc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0])
    for window, (loss_sum, tokens) in zip(windows, held.per_example, strict=True):
        acc = per_doc[(window.path, window.line)]
        acc[0] += loss_sum
        acc[1] += tokens
    metrics = {"loss": held.loss, "perplexity": held.perplexity, "token_accuracy": held.token_accuracy,
               "tokens": held.tokens, "documents": len(per_doc), "windows": len(windows)}
    return metrics, [(float(s), int(n)) for s, n in per_doc.values()]


def compare_text(tuned: Any, base: Any | None, examples: Sequence[Example], batch_size: int,
                 resamples: int, seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Each system's metrics, and tuned - base loss per token with its paired interval."""
    systems: dict[str, dict[str, Any]] = {}
    sums: dict[str, list[tuple[float, int]]] = {}
    for name, lm in (("base", base), ("tuned", tuned)):
        if lm is not None:
            systems[name], sums[name] = document_sums(lm, examples, batch_size)
    if base is None:
        return systems, None
    t, b = sums["tuned"], sums["base"]
    if [n for _, n in t] != [n for _, n in b]:  # a different tokenizer: no longer the same tokens
        return systems, {"comparable": False, "reason": "the base and tuned tokenizers split the text differently"}
    diff = bootstrap_ratio([x - y for (x, _), (y, _) in zip(t, b)], [n for _, n in t], resamples, seed)
    return systems, {"comparable": True, "loss_diff": diff.to_json(), "better": diff.high < 0, "worse": diff.low > 0}


def verdict_line(systems: dict[str, dict[str, Any]], diff: dict[str, Any] | None) -> str:
    tuned = systems["tuned"]
    head = f"held-out loss {tuned['loss']:.4f} (perplexity {tuned['perplexity']:.2f})"
    if diff is None:
        return f"{head}; no base model evaluated to compare against"
    if not diff["comparable"]:
        return f"{head}; not compared with the base: {diff['reason']}"
    d, base = diff["loss_diff"], systems["base"]
    where = ("better than the base beyond the 95% interval" if diff["better"] else
             "worse than the base beyond the 95% interval" if diff["worse"] else "within the interval of the base")
    return (f"{head} vs the base's {base['loss']:.4f} ({base['perplexity']:.2f}): "
            f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] nats/token, {where}")


def evaluate_text_run(run_dir: Path, data: Path, examples: Sequence[Example], limit: int | None,
                      baselines: Sequence[str], batch_size: int, resamples: int, seed: int,
                      on_status: Callable[[str], None] | None = None,
                      general: Callable[[Any, Any], Any] | None = None) -> dict[str, Any]:
    """`tunecraft eval RUN --data DOCS.jsonl` for raw text (`examples`: that file's); writes
    eval.json and returns it.

    `general(base, tuned)`: the general-abilities check (evaluate.py's), when asked for.
    """
    from tunecraft.serve.engine import ModelCache, load_target

    status = on_status or (lambda _msg: None)
    info = rundir.read_run(run_dir)
    examples = examples[:limit] if limit else examples
    cache = ModelCache()
    tuned = load_target(str(run_dir), name="tuned", cache=cache)
    base = None
    if baselines:  # "prompted" means nothing for raw text: a document has no prompt to improve
        status(f"loading the base model {info.base_model}")
        base = load_target(str(rundir.resolve_base(info)), name="base", cache=cache)
    status(f"scoring {len(examples)} held-out documents (every token) with "
           + ("the base and the tuned model" if base is not None else "the tuned model"))
    systems, diff = compare_text(tuned, base, examples, batch_size, resamples, seed)
    checked = general(base, tuned) if general is not None else None
    line = verdict_line(systems, diff)
    payload = {
        "kind": "text",
        "run_dir": str(run_dir),
        "data": str(data),
        "examples": len(examples),
        "systems": systems,
        "comparison": diff,
        "ship": {"ship": bool(diff and diff.get("better")), "line": line},
        "verdict": run_verdict(run_dir).to_json(),
        "general": checked.to_json() if checked is not None else None,
    }
    rundir.write_eval(run_dir, payload)
    return payload


def print_text(payload: dict[str, Any], console: Any) -> None:
    """The base / tuned table and the verdict lines."""
    from rich.table import Table

    from tunecraft.curves import print_verdict

    table = Table(title=f"Held-out text: {payload['examples']} documents, every token scored", title_justify="left")
    for col in ("system", "loss", "perplexity", "token accuracy", "tokens", "windows"):
        table.add_column(col, justify="left" if col == "system" else "right")
    for name, row in payload["systems"].items():
        table.add_row(name, f"{row['loss']:.4f}", f"{row['perplexity']:.2f}", f"{row['token_accuracy']:.3f}",
                      f"{row['tokens']:,}", f"{row['windows']:,}", style="magenta" if name == "tuned" else None)
    console.print(table)
    if payload.get("general"):
        console.print(f"  {payload['general']['line']}", markup=False, highlight=False)
    print_verdict(payload["verdict"], console)
    colour = "green" if payload["ship"]["ship"] else "red"
    console.print(f"[bold {colour}]{escape(payload['ship']['line'])}[/]", highlight=False)

