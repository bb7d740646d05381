"""The evaluation report: one self-contained HTML file, readable without tunecraft.

`RUN_DIR/report/index.html` holds the verdicts, the loss curves (best step and overfitting
onset marked), the metric comparison with intervals, the data statistics, the resolved config
and side-by-side answers (a sample, then every flipped example). CSS is inline and plots are
base64 PNGs drawn with matplotlib's Agg backend; every piece of user text goes through
`html.escape`.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from tunecraft import rundir

SAMPLE = 10  # side-by-side answers shown besides the flipped ones
SECTIONS = ("verdicts", "curves", "metrics", "task", "general", "data", "config", "answers", "flips")

# A table wider than the page (side-by-side answers on a phone) scrolls in its own box, never the
# page; long answers and paths wrap anywhere in their cells.
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem;display:block;max-width:100%;overflow-x:auto}
td,th{border:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.ship{font-size:1.15rem;font-weight:600;padding:.6rem .8rem;border-radius:6px}
.yes{background:#e6f4ea;color:#135c27}.no{background:#fdecea;color:#8a1c12}
.ok{color:#135c27}.bad{color:#8a1c12}pre{background:#f7f7f7;padding:.7rem;overflow:auto}
.answers td{max-width:260px;overflow-wrap:anywhere;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:.8rem}
img{max-width:100%}
"""


# ----------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    """A matplotlib figure as a data URI (and the figure closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: the report is written, never shown
    import matplotlib.pyplot as plt

    return plt


def loss_curves_png(rows: list[dict[str, Any]], verdict: dict[str, Any]) -> str:
    """Training and validation loss against step; best step and overfitting onset marked."""
    plt = _pyplot()
    train = [(r["step"], r["loss"]) for r in rows if r.get("type") == "train" and r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("type") == "eval" and r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#4c72b0", alpha=0.8)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="#dd8452", marker="o")
    best = verdict.get("best_step")
    if best is not None:
        ax.axvline(best, color="#55a868", linestyle="--", label=f"best step {best}")
    onset = verdict.get("onset_step")
    if onset is not None:
        ax.axvspan(onset, max(s for s, _ in val), color="#c44e52", alpha=0.08, label=f"overfitting from step {onset}")
    losses = [v for _, v in train + val if v > 0]
    if losses and max(losses) / min(losses) > 100:  # a long converged tail is flat on a linear axis
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def metric_png(payload: dict[str, Any]) -> str:
    """The main metric per system with its 95% bootstrap interval."""
    plt = _pyplot()
    names = list(payload["systems"])
    mains = [payload["systems"][n]["main"] for n in names]
    means = [m["mean"] for m in mains]
    errors = [[m["mean"] - m["low"] for m in mains], [m["high"] - m["mean"] for m in mains]]
    colours = ["#8172b3" if n == "tuned" else "#a0a0a0" for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, means, yerr=errors, capsize=6, color=colours)
    ax.set_ylabel(f"{payload['main_metric']} (95% interval)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


# ----------------------------------------------------------------------------- html pieces


def _table(headers: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td{_num(c)}>{escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _num(value: Any) -> str:
    return ' class="num"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def _verdicts(payload: dict[str, Any]) -> str:
    ship, verdict = payload["ship"], payload["verdict"]
    cls = "yes" if ship["ship"] else "no"
    parts = [f'<p class="ship {cls}">{escape(ship["line"])}</p>',
             f"<p><b>Training curves:</b> {escape(verdict.get('message', ''))}</p>"]
    rec = verdict.get("recommended") or {}
    if rec:
        where = rec.get("checkpoint") or rec.get("path")
        parts.append(f"<p><b>Recommended checkpoint:</b> step {escape(str(rec.get('step')))} "
                     f"({escape(str(where))}): {escape(str(rec.get('reason', '')))}</p>")
    tips = verdict.get("suggestions") or []
    if tips:
        parts.append("<p><b>What to try:</b></p><ul>" + "".join(f"<li>{escape(t)}</li>" for t in tips) + "</ul>")
    for note in verdict.get("notes") or []:
        parts.append(f"<p><b>Note:</b> {escape(note)}</p>")
    return "".join(parts)


def _metric_rows(payload: dict[str, Any]) -> str:
    main = payload["main_metric"]
    headers = ["system", f"{main} [95% interval]", "exact match", "token F1", "ROUGE-L"]
    kind = payload["answer_kind"]
    if kind["kind"] == "json":
        headers.append("valid JSON")
    if kind["labels"]:
        headers += ["accuracy", "macro-F1"]
    headers += ["held-out loss", "perplexity"]
    rows = []
    for name, s in payload["systems"].items():
        m, iv = s["metrics"], s["main"]
        row: list[Any] = [name, f"{iv['mean']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]",
                          m["exact_match"], m["token_f1"], m["rouge_l"]]
        if kind["kind"] == "json":
            row.append(m.get("valid_json_rate"))
        if kind["labels"]:
            row += [m.get("accuracy"), m.get("macro_f1")]
        rows.append(row + [s["loss"], s["perplexity"]])
    comp = payload["comparison"]
    diffs = [[f"tuned - {n}", f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]",
              "yes" if comp["beyond_interval"][n] else "no"] for n, d in comp["diff"].items()]
    body = _table(headers, rows)
    if diffs:
        body += "<p>Paired bootstrap of the difference on the same examples:</p>"
        body += _table(["comparison", f"{main} difference [95% interval]", "better beyond interval"], diffs)
    confusions = payload["systems"].get("tuned", {}).get("metrics", {}).get("confusions") or []
    if confusions:
        body += "<p>Most frequent confusions of the tuned model:</p>"
        body += _table(["reference", "predicted", "count"],
                       [[c["reference"], c["predicted"], c["count"]] for c in confusions])
    return body


def _pct(x: Any) -> Any:
    return None if x is None else round(100 * x, 1)


def _curve_table(points: list[dict[str, Any]], chosen: float) -> str:
    rows = [[("▶ " if abs(p["threshold"] - chosen) < 1e-9 else "") + f"{p['threshold']:.3f}", _pct(p["in_scope_accuracy"]),
             _pct(p["reject_recall"]), _pct(p["rejected_share"])] for p in points]
    return _table(["threshold", "in-scope accuracy %", "reject recall %", "answers rejected %"], rows)


def _task(payload: dict[str, Any]) -> str:
    """Closed labels: constrained decoding, the classical baseline, per-label scores, rejection."""
    labels, classical, reject = payload.get("labels"), payload.get("classical"), payload.get("reject")
    if not labels and not classical:
        return "<p>Not a closed-label task (the answers are free text): no label set, no classical baseline.</p>"
    body = ""
    if labels:
        how = "constrained to the label set (every answer is a label, with its probability)" if labels["constrained"] \
            else "free text (--no-label-constraint)"
        body += (f"<p>The run has a closed set of <b>{labels['count']}</b> labels ({escape(labels['detected'])}); "
                 f"answers were decoded {escape(how)}.</p>")
        body += _table(["system", "answers that are no label of the set"], [[n, v] for n, v in labels["invalid_labels"].items()])
    tuned = payload["systems"].get("tuned", {}).get("metrics", {})
    if classical:
        m, cm = classical["main"], classical["metrics"]
        body += (f"<h3>Classical baseline: TF-IDF + logistic regression</h3><p>Trained on the same "
                 f"{classical['train_examples']} training rows in {classical['seconds']:.1f} s: accuracy "
                 f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}], macro-F1 {cm['macro_f1']:.3f} "
                 f"(tuned: {_fmt(tuned.get('accuracy'))}, {_fmt(tuned.get('macro_f1'))}). "
                 f"<b>{escape(classical['line'])}</b>.</p>")
        if cm.get("confusions"):
            body += "<p>Most frequent confusions of TF-IDF + LR:</p>" + _table(
                ["reference", "predicted", "count"], [[c["reference"], c["predicted"], c["count"]] for c in cm["confusions"]])
    body += _per_label(tuned.get("per_label") or [], (classical or {}).get("metrics", {}).get("per_label") or [])
    if reject:
        w, wo = reject["test"]["with"], reject["test"]["without"]
        body += (f"<h3>Reject label <code>{escape(reject['reject_label'])}</code></h3><p>Answers whose probability is "
                 f"below <b>{reject['threshold']:.3f}</b> become the reject label. Chosen on the validation split only: "
                 f"{escape(reject['reason'])}.</p><p>On test ({reject['test']['reject_examples']} reject examples): in-scope "
                 f"accuracy {_fmt(wo['in_scope_accuracy'])} without rejection, {_fmt(w['in_scope_accuracy'])} with it; "
                 f"reject recall {_fmt(wo['reject_recall'])} -> {_fmt(w['reject_recall'])}.</p>")
        if reject.get("validation"):
            body += "<p>Validation (where the threshold was chosen):</p>" + _curve_table(reject["validation"]["curve"], reject["threshold"])
        body += "<p>Test (for reading only; nothing was chosen on it):</p>" + _curve_table(reject["test"]["curve"], reject["threshold"])
    return body


def _per_label(tuned: list[dict[str, Any]], classical: list[dict[str, Any]]) -> str:
    if not tuned and not classical:
        return ""
    other = {r["label"]: r for r in classical}
    rows = []
    for r in tuned or classical:
        c = other.get(r["label"], {})
        rows.append([r["label"], r["support"], r["precision"], r["recall"], r["f1"],
                     c.get("precision"), c.get("recall"), c.get("f1")])
    return ("<p>Per label (tuned, and TF-IDF + LR):</p>" +
            _table(["label", "support", "tuned P", "tuned R", "tuned F1", "TF-IDF P", "TF-IDF R", "TF-IDF F1"], rows))


def _general(payload: dict[str, Any]) -> str:
    general = payload.get("general")
    if not general:
        return "<p>Not measured (--no-general).</p>"
    cls = "ok" if general["kept"] else "bad"
    body = (f'<p class="{cls}"><b>{escape(general["line"])}</b></p><p>The base model answered {general["prompts"]} generic '
            f"prompts shipped with tunecraft (greedy, {general['tokens']} answer tokens in all); both models then read "
            f"those answers. KL(base || tuned) is averaged per answer token; kept when at most {general['threshold_kl']} "
            "nats/token.</p>")
    rows = [[s["prompt"], s["base_answer"], s["kl_per_token"]] for s in general["samples"][:SAMPLE]]
    return body + _table(["prompt", "base answer", "KL per token"], rows, "answers")


def _data_rows(payload: dict[str, Any]) -> str:
    stats = dict(payload["data_stats"])
    labels = stats.pop("test_labels", None)
    body = _table(["statistic", "value"], [[k.replace("_", " "), v] for k, v in stats.items()])
    kind = payload["answer_kind"]
    body += f"<p>Answers scored as <b>{escape(kind['kind'])}</b>"
    if kind.get("label_field"):
        body += f"; label field <code>{escape(kind['label_field'])}</code>"
    body += ".</p>"
    if labels:
        body += _table(["test label", "examples"], [[k, v] for k, v in labels.items()])
    prompt = payload.get("prompt")
    if prompt:
        body += "<p>Prompted baseline: system prompt (" + escape(prompt["source"]) + ") and few-shot rows "
        body += escape(", ".join(prompt["few_shot"]) or "none") + ":</p><pre>" + escape(prompt["system"]) + "</pre>"
    return body


def _answers_table(payload: dict[str, Any], indices: list[int]) -> str:
    systems = list(payload["systems"])
    rows = []
    for i in indices:
        case = payload["cases"][i]
        rows.append([case["where"], case["prompt"], case["reference"],
                     *[("✓ " if case["correct"][n] else "✗ ") + case["answers"][n] for n in systems]])
    if not rows:
        return "<p>None.</p>"
    return _table(["row", "prompt", "reference", *systems], rows, "answers")


def _flips(payload: dict[str, Any]) -> str:
    flips = payload["comparison"]["flips"]
    if flips.get("against") is None:
        return "<p>No baseline was evaluated.</p>"
    against = escape(str(flips["against"]))
    return (f"<h3>Fixed by tuning ({len(flips['fixed'])}): wrong for {against}, right for tuned</h3>"
            + _answers_table(payload, flips["fixed"])
            + f"<h3>Broken by tuning ({len(flips['broken'])}): right for {against}, wrong for tuned</h3>"
            + _answers_table(payload, flips["broken"]))


# ----------------------------------------------------------------------------- page


def render_report(payload: dict[str, Any], rows: list[dict[str, Any]], config_text: str) -> str:
    """The whole HTML page as a string."""
    curves = f'<img alt="loss curves" src="{loss_curves_png(rows, payload["verdict"])}">'
    bars = f'<img alt="metric comparison" src="{metric_png(payload)}">'
    sample = list(range(min(SAMPLE, len(payload["cases"]))))
    run = escape(payload["run_dir"])
    parts = [
        _section("verdicts", "Verdicts", _verdicts(payload)),
        _section("curves", "Loss curves", curves),
        _section("metrics", "Metric comparison", bars + _metric_rows(payload)),
        _section("task", "Labels, classical baseline and rejection", _task(payload)),
        _section("general", "General abilities", _general(payload)),
        _section("data", "Data", _data_rows(payload)),
        _section("config", "Resolved config", f"<pre>{escape(config_text)}</pre>"),
        _section("answers", f"Side-by-side answers (first {len(sample)})", _answers_table(payload, sample)),
        _section("flips", "Flipped examples", _flips(payload)),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>tunecraft report: {run}</title><style>{CSS}</style></head><body>"
        f"<h1>Evaluation report</h1><p>Run <code>{run}</code>, {payload['examples']} held-out examples "
        f"from <code>{escape(payload['data'])}</code>.</p>" + "".join(parts) + "</body></html>\n"
    )


def write_report(run_dir: Path, payload: dict[str, Any]) -> Path:
    """Write RUN_DIR/report/index.html from an eval payload and the run's logs."""
    config_path = run_dir / rundir.CONFIG
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else "(no config.yaml)"
    return rundir.write_report(run_dir, render_report(payload, rundir.read_metrics(run_dir), config_text))


def payload_from(run_dir: Path) -> dict[str, Any]:
    """The last evaluation of a run (eval.json), to re-render the report without re-running."""
    return rundir.read_eval(run_dir)
