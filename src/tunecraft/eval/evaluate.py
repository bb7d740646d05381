"""`tunecraft eval`: base vs prompt-engineered vs tuned on the same held-out examples.

For each system: held-out loss and perplexity of the reference answers, batched greedy answers,
task metrics, and a bootstrap interval on the main metric. Then the paired comparison with the
best baseline (which examples the tuning fixed or broke), the overfitting verdict from the
curves, and the ship verdict. Everything lands in `RUN_DIR/eval.json` and the HTML report.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft import rundir
from tunecraft.config import RunConfig
from tunecraft.curves import Verdict, run_verdict
from tunecraft.errors import ConfigError
from tunecraft.eval import metrics as M
from tunecraft.eval.baselines import PromptSpec, build_prompt
from tunecraft.eval.bootstrap import Interval, bootstrap_mean, bootstrap_paired_diff
from tunecraft.eval.cases import EvalCase, case_from_example, load_cases, scoring_example, training_examples
from tunecraft.eval.checkpoints import find_checkpoint, materialize
from tunecraft.eval.heldout import heldout_loss, tokenize_for
from tunecraft.eval.verdict import ship_verdict
from tunecraft.serve.engine import LoadedModel, ModelCache, SamplingParams, generate_chat, load_target
from tunecraft.rundir import read_run, resolve_base

BASELINES = ("base", "prompted")
# Test loss this many times the best validation loss hints that validation did not represent test.
TEST_VAL_GAP = 1.25


@dataclass
class EvalOptions:
    data: Path
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    limit: int | None = None
    max_new_tokens: int = 128
    batch_size: int = 8
    few_shot: int = 3
    prompt_file: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    seed: int = 0
    resamples: int = 1000
    report: bool = True

    def check(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        problems = [f"--baselines: unknown {b!r} (known: {', '.join(BASELINES)})" for b in unknown]
        if not self.data.is_file():
            problems.append(f"--data: {self.data}: no such file")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            problems.append(f"--prompt-file: {self.prompt_file}: no such file")
        if problems:
            raise ConfigError("invalid evaluation options:\n" + "\n".join(problems))


def options_for(run_dir: Path, data: Path, **given: Any) -> EvalOptions:
    """Options from the run's `eval:` config section, overridden by what was given (not None)."""
    cfg = rundir.read_config(run_dir)
    base = {
        "baselines": list(cfg.eval.baselines), "limit": cfg.eval.limit,
        "max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size,
        "few_shot": cfg.eval.few_shot, "prompt_file": cfg.eval.prompt_file,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    return EvalOptions(data=data, **base)


# ----------------------------------------------------------------------------- one system


@dataclass
class SystemResult:
    name: str
    answers: list[str]
    scores: list[M.ExampleScore]
    aggregate: M.SystemScores
    loss: float
    perplexity: float
    token_accuracy: float
    main: Interval
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": _finite(self.loss), "perplexity": _finite(self.perplexity),
            "token_accuracy": _finite(self.token_accuracy), "metrics": self.aggregate.to_json(),
            "main": self.main.to_json(), "seconds": round(self.seconds, 2),
        }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _answer_all(lm: LoadedModel, convs: list[list[dict[str, str]]], opts: EvalOptions) -> list[str]:
    """Greedy answers, generated shortest prompt first (less padding per batch), in input order."""
    order = sorted(range(len(convs)), key=lambda i: len(lm.chat_prompt(convs[i])))
    done = generate_chat(lm, [convs[i] for i in order], SamplingParams(max_tokens=opts.max_new_tokens), opts.batch_size)
    answers = [""] * len(convs)
    for i, completion in zip(order, done):
        answers[i] = completion.text.strip()
    return answers


def fit_shots(spec: PromptSpec, lm: LoadedModel, cases: list[EvalCase], max_new_tokens: int) -> PromptSpec:
    """Drop few-shot turns (last first) until the longest prompted conversation fits the context."""
    longest = max(cases, key=lambda c: len(lm.chat_prompt(c.messages)))
    while spec.shots and len(lm.chat_prompt(spec.conversation(longest))) + max_new_tokens > lm.context_length:
        spec = dataclasses.replace(spec, shots=spec.shots[:-1])
    return spec


def run_system(
    name: str,
    lm: LoadedModel,
    cases: list[EvalCase],
    prefix: PromptSpec | None,
    kind: M.AnswerKind,
    opts: EvalOptions,
    rouge: M.RougeL,
) -> SystemResult:
    t0 = time.time()
    convs = [prefix.conversation(c) if prefix else c.messages for c in cases]
    answers = _answer_all(lm, convs, opts)
    # Loss is scored on exactly the conversation the system answered (prefix included).
    scoring = [scoring_example(dataclasses.replace(c, messages=conv)) for c, conv in zip(cases, convs)]
    held = heldout_loss(lm, tokenize_for(lm, scoring), batch_size=opts.batch_size)
    scores = [M.score_example(a, c.reference, kind, rouge) for a, c in zip(answers, cases)]
    main = bootstrap_mean(M.per_example_main(scores, kind), opts.resamples, opts.seed)
    return SystemResult(name, answers, scores, M.aggregate(scores, kind), held.loss, held.perplexity,
                        held.token_accuracy, main, time.time() - t0)


# ----------------------------------------------------------------------------- systems


def _load_systems(
    run_dir: Path, opts: EvalOptions, tmp: Path, on_status: Callable[[str], None]
) -> list[tuple[str, LoadedModel]]:
    """(name, model) for base, prompted (same model as base), tuned and each checkpoint."""
    info = read_run(run_dir)
    cache = ModelCache()
    tuned = load_target(str(run_dir), name="tuned", cache=cache)
    systems: list[tuple[str, LoadedModel]] = []
    if opts.baselines:
        on_status(f"loading the base model {info.base_model}")
        base = load_target(str(resolve_base(info)), name="base", cache=cache)
        # The base answers prompts rendered exactly as the tuned model's (template, system prompt).
        base = dataclasses.replace(base, template=tuned.template, system_prompt=tuned.system_prompt)
        systems += [(b, base) for b in opts.baselines]
    systems.append(("tuned", tuned))
    for name in opts.checkpoints:
        path = find_checkpoint(run_dir, name)
        target = materialize(info, path, tmp / path.name)
        systems.append((path.name, load_target(str(target), name=path.name, cache=cache)))
    return systems


def _train_cases(run_dir: Path, cfg: RunConfig) -> tuple[list[EvalCase], str]:
    examples, why = training_examples(run_dir, cfg.data.train)
    cases = [c for c in (case_from_example(e) for e in examples) if c is not None]
    return cases, why


def _prompt_spec(opts: EvalOptions, train: list[EvalCase], why: str, kind: M.AnswerKind) -> PromptSpec:
    text = Path(opts.prompt_file).read_text(encoding="utf-8") if opts.prompt_file else None
    if not train and text is None:
        raise ConfigError(
            f"the prompted baseline needs the run's training data for its prompt and few-shot "
            f"examples, but {why}. Pass --prompt-file FILE, or --baselines base."
        )
    return build_prompt(train, kind, opts.few_shot, opts.seed, text, opts.prompt_file)


# ----------------------------------------------------------------------------- comparison


def _flips(best: SystemResult, tuned: SystemResult) -> dict[str, Any]:
    fixed = [i for i, (b, t) in enumerate(zip(best.scores, tuned.scores)) if not b.correct and t.correct]
    broken = [i for i, (b, t) in enumerate(zip(best.scores, tuned.scores)) if b.correct and not t.correct]
    return {"against": best.name, "fixed": fixed, "broken": broken}


def _compare(results: dict[str, SystemResult], kind: M.AnswerKind, opts: EvalOptions) -> dict[str, Any]:
    tuned = results["tuned"]
    tuned_main = M.per_example_main(tuned.scores, kind)
    vs = {}
    for name in opts.baselines:
        other = M.per_example_main(results[name].scores, kind)
        vs[name] = bootstrap_paired_diff(tuned_main, other, opts.resamples, opts.seed)
    best = max(opts.baselines, key=lambda n: results[n].main.mean) if opts.baselines else None
    return {
        "best_baseline": best,
        "diff": {n: d.to_json() for n, d in vs.items()},
        "beyond_interval": {n: bool(d.low > 0) for n, d in vs.items()},
        "flips": _flips(results[best], tuned) if best else {"against": None, "fixed": [], "broken": []},
        "_intervals": vs,
    }


def _eval_notes(verdict: Verdict, tuned: SystemResult) -> list[str]:
    notes = []
    if verdict.best_val_loss and math.isfinite(tuned.loss) and tuned.loss > TEST_VAL_GAP * verdict.best_val_loss:
        notes.append(
            f"held-out test loss {tuned.loss:.4f} is well above the best validation loss "
            f"{verdict.best_val_loss:.4f}: the validation set may not represent the test set"
        )
    return notes


def _data_stats(run_dir: Path, cases: list[EvalCase], kind: M.AnswerKind, n_train_rows: int) -> dict[str, Any]:
    summary = rundir.read_summary(run_dir)
    words = sorted(len(c.reference.split()) for c in cases)
    stats: dict[str, Any] = {
        "train_examples": summary.get("train_examples", n_train_rows),
        "val_examples": summary.get("val_examples"),
        "train_tokens": summary.get("train_tokens"),
        "test_examples": len(cases),
        "answer_words_median": words[len(words) // 2] if words else 0,
        "answer_words_max": words[-1] if words else 0,
    }
    if kind.has_labels:
        counts = Counter(M.read_label(c.reference, kind) for c in cases)
        stats["test_labels"] = dict(counts.most_common())
    return stats


# ----------------------------------------------------------------------------- entry


def evaluate_run(
    run_dir: Path, opts: EvalOptions, on_status: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Evaluate a run; writes RUN_DIR/eval.json (and the report) and returns the payload."""
    status = on_status or (lambda _msg: None)
    run_dir = Path(run_dir)
    opts.check()
    info = read_run(run_dir)  # fails early, with the missing file named
    cfg = rundir.read_config(run_dir)
    cases = load_cases(opts.data, opts.limit)
    train, why = _train_cases(run_dir, cfg)
    kind = M.detect_kind([c.reference for c in train] + [c.reference for c in cases])
    spec = _prompt_spec(opts, train, why, kind) if "prompted" in opts.baselines else None
    asked_shots = len(spec.shots) if spec else 0
    rouge = M.RougeL()
    results: dict[str, SystemResult] = {}
    with tempfile.TemporaryDirectory(prefix="tunecraft-eval-") as tmp:
        for name, lm in _load_systems(run_dir, opts, Path(tmp), status):
            status(f"evaluating {name} on {len(cases)} examples")
            if name == "prompted" and spec is not None:
                spec = fit_shots(spec, lm, cases, opts.max_new_tokens)
                if len(spec.shots) < asked_shots:
                    status(f"prompted: {len(spec.shots)} of {asked_shots} few-shot examples fit the context")
            results[name] = run_system(name, lm, cases, spec if name == "prompted" else None, kind, opts, rouge)
    comparison = _compare(results, kind, opts)
    intervals = comparison.pop("_intervals")
    verdict = run_verdict(run_dir)
    ship = ship_verdict(
        M.main_metric(kind), results["tuned"].main,
        {n: (results[n].main, intervals[n]) for n in opts.baselines}, verdict,
    )
    payload = {
        "run_dir": str(info.run_dir),
        "data": str(opts.data),
        "examples": len(cases),
        "settings": {k: v for k, v in dataclasses.asdict(opts).items() if k != "data"},
        "answer_kind": kind.to_json(),
        "main_metric": M.main_metric(kind),
        "prompt": spec.to_json() if spec else None,
        "systems": {n: r.to_json() for n, r in results.items()},
        "comparison": comparison,
        "verdict": {**verdict.to_json(), "notes": _eval_notes(verdict, results["tuned"])},
        "ship": ship.to_json(),
        "data_stats": _data_stats(run_dir, cases, kind, len(train)),
        "cases": _case_rows(cases, results),
    }
    rundir.write_eval(run_dir, payload)
    if opts.report:
        from tunecraft.eval.report import write_report

        payload["report"] = str(write_report(run_dir, payload))
    return payload


def _case_rows(cases: list[EvalCase], results: dict[str, SystemResult]) -> list[dict[str, Any]]:
    rows = []
    for i, case in enumerate(cases):
        rows.append({
            "where": case.where,
            "prompt": case.prompt_text,
            "reference": case.reference,
            "answers": {n: r.answers[i] for n, r in results.items()},
            "correct": {n: r.scores[i].correct for n, r in results.items()},
        })
    return rows
