"""`tunecraft eval`: base vs prompt-engineered vs tuned on the same held-out examples.

For each system: held-out loss and perplexity of the reference answers, batched greedy answers,
task metrics, and a bootstrap interval on the main metric. Then the paired comparison with the
best baseline (which examples the tuning fixed or broke), the overfitting verdict from the
curves, and the ship verdict. Everything lands in `RUN_DIR/eval.json` and the HTML report.

A closed-label run (`labels.json`) is answered constrained to its label set by every system
(`--no-label-constraint`: free text), the tuned model with its reject threshold; such tasks also
get the TF-IDF + logistic-regression baseline (`eval.classical`) and the rejection curves. The
general-abilities check (`eval.general`) measures how far tuning moved the model off the task.
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
from tunecraft.data.loader import load_examples
from tunecraft.errors import ConfigError
from tunecraft.eval import metrics as M
from tunecraft.eval.baselines import PromptSpec, build_prompt
from tunecraft.eval.bootstrap import Interval, bootstrap_mean, bootstrap_paired_diff
from tunecraft.eval.cases import EvalCase, case_from_example, load_cases, scoring_example, training_examples
from tunecraft.eval.checkpoints import find_checkpoint, materialize
from tunecraft.eval.classical import run_classical
from tunecraft.eval.general import measure_general
from tunecraft.eval.heldout import heldout_loss, tokenize_for
from tunecraft.eval.preference import are_pairs, evaluate_preference_run
from tunecraft.eval.text import all_text, evaluate_text_run
from tunecraft.eval.verdict import ship_verdict
from tunecraft.labels import rejection_curve, rejection_point
from tunecraft.serve.engine import LabelAnswer, LoadedModel, ModelCache, SamplingParams, classify, generate_chat, load_target
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
    label_constraint: bool = True  # closed-label runs: answer with a label of the set
    general: bool = True  # measure the tuned model's distance from the base on generic prompts

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
    label_answers: list[LabelAnswer] | None = None  # constrained to the run's label set

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": _finite(self.loss), "perplexity": _finite(self.perplexity),
            "token_accuracy": _finite(self.token_accuracy), "metrics": self.aggregate.to_json(),
            "main": self.main.to_json(), "seconds": round(self.seconds, 2),
            "constrained": self.label_answers is not None,
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
    labelled = None
    if opts.label_constraint and lm.labels is not None:
        # Only the tuned model has a calibrated threshold (it was chosen for its weights).
        labelled = classify(lm, [lm.chat_prompt(c) for c in convs], reject=name == "tuned", batch_size=opts.batch_size)
        answers = [a.label for a in labelled]
    else:
        answers = _answer_all(lm, convs, opts)
    # Loss is scored on exactly the conversation the system answered (prefix included).
    scoring = [scoring_example(dataclasses.replace(c, messages=conv)) for c, conv in zip(cases, convs)]
    held = heldout_loss(lm, tokenize_for(lm, scoring), batch_size=opts.batch_size)
    scores = [M.score_example(a, c.reference, kind, rouge) for a, c in zip(answers, cases)]
    main = bootstrap_mean(M.per_example_main(scores, kind), opts.resamples, opts.seed)
    return SystemResult(name, answers, scores, M.aggregate(scores, kind), held.loss, held.perplexity,
                        held.token_accuracy, main, time.time() - t0, labelled)


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
        # The base answers prompts rendered exactly as the tuned model's (template, system prompt),
        # constrained to the same label set.
        base = dataclasses.replace(base, template=tuned.template, system_prompt=tuned.system_prompt, labels=tuned.labels)
        systems += [(b, base) for b in opts.baselines]
    systems.append(("tuned", tuned))
    for name in opts.checkpoints:
        path = find_checkpoint(run_dir, name)
        target = materialize(info, path, tmp / path.name)
        checkpoint = load_target(str(target), name=path.name, cache=cache)
        systems.append((path.name, dataclasses.replace(checkpoint, labels=tuned.labels)))
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
    examples = load_examples(opts.data)  # read once: its format decides how it is scored
    if are_pairs(examples):  # preference pairs: scored, not generated (eval/preference.py)
        return evaluate_preference_run(run_dir, opts.data, examples, opts.limit, status)
    info = read_run(run_dir)  # fails early, with the missing file named
    if all_text(examples):  # raw documents: scored token by token, nothing generated (eval/text.py)
        def general(base: LoadedModel | None, tuned: LoadedModel) -> Any:
            return _general(info, {"tuned": tuned, **({"base": base} if base else {})}, opts, status)

        return evaluate_text_run(run_dir, opts.data, examples, opts.limit, opts.baselines, opts.batch_size, opts.resamples,
                                 opts.seed, status, general if opts.general else None)
    cfg = rundir.read_config(run_dir)
    cases = load_cases(opts.data, opts.limit, examples)
    train, why = _train_cases(run_dir, cfg)
    kind = M.detect_kind([c.reference for c in train] + [c.reference for c in cases])
    spec = _prompt_spec(opts, train, why, kind) if "prompted" in opts.baselines else None
    asked_shots = len(spec.shots) if spec else 0
    rouge = M.RougeL()
    results: dict[str, SystemResult] = {}
    loaded: dict[str, LoadedModel] = {}
    with tempfile.TemporaryDirectory(prefix="tunecraft-eval-") as tmp:
        for name, lm in _load_systems(run_dir, opts, Path(tmp), status):
            loaded[name] = lm
            status(f"evaluating {name} on {len(cases)} examples")
            if name == "prompted" and spec is not None:
                spec = fit_shots(spec, lm, cases, opts.max_new_tokens)
                if len(spec.shots) < asked_shots:
                    status(f"prompted: {len(spec.shots)} of {asked_shots} few-shot examples fit the context")
            results[name] = run_system(name, lm, cases, spec if name == "prompted" else None, kind, opts, rouge)
        general = _general(info, loaded, opts, status) if opts.general else None
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
        "labels": _label_section(loaded["tuned"], results, opts),
        "classical": _classical(train, cases, kind, results["tuned"], opts, status),
        "reject": _reject_section(loaded["tuned"], results["tuned"], kind, cases),
        "general": general.to_json() if general is not None else None,
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
            "label_probability": {n: r.label_answers[i].confidence for n, r in results.items() if r.label_answers},
        })
    return rows


# ----------------------------------------------------------------------------- closed labels


def _label_section(tuned: LoadedModel, results: dict[str, SystemResult], opts: EvalOptions) -> dict[str, Any] | None:
    """The run's label set, and whether answers were constrained to it."""
    labels = tuned.labels
    if labels is None:
        return None
    return {"count": len(labels.labels), "reject_label": labels.reject_label, "threshold": labels.threshold,
            "constrained": opts.label_constraint, "detected": labels.detected,
            "invalid_labels": {n: r.aggregate.invalid_labels for n, r in results.items()}}


def _classical(train: list[EvalCase], cases: list[EvalCase], kind: M.AnswerKind, tuned: SystemResult,
               opts: EvalOptions, status: Callable[[str], None]) -> dict[str, Any] | None:
    """TF-IDF + logistic regression on the training split, beside the LLM systems."""
    if not kind.has_labels or not train:
        return None
    status(f"training the classical baseline (TF-IDF + logistic regression) on {len(train)} training examples")
    res = run_classical(train, cases, kind, opts.seed)
    main = bootstrap_mean([float(c) for c in res.correct], opts.resamples, opts.seed)
    diff = bootstrap_paired_diff([float(s.correct) for s in tuned.scores], [float(c) for c in res.correct],
                                 opts.resamples, opts.seed)
    if diff.low > 0:
        line = f"tuned beats TF-IDF + LR by {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]: the LLM earns its cost here"
    elif diff.high < 0:
        line = (f"TF-IDF + LR beats tuned by {-diff.mean:.3f} [{-diff.high:.3f}, {-diff.low:.3f}]: "
                "a linear model does this task better; an LLM is not needed for it yet")
    else:
        line = f"tuned - TF-IDF + LR: {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}], within the interval"
    return {"name": "tfidf+logreg", "train_examples": res.train_examples, "seconds": round(res.seconds, 2),
            "metrics": res.scores, "main": main.to_json(), "diff_tuned_minus_classical": diff.to_json(),
            "line": line, "predictions": res.predictions}


def _reject_section(tuned: LoadedModel, result: SystemResult, kind: M.AnswerKind, cases: list[EvalCase]) -> dict[str, Any] | None:
    """Reject recall and in-scope accuracy on test, at the validation-chosen threshold and without it."""
    labels = tuned.labels
    if labels is None or labels.reject_label is None or result.label_answers is None:
        return None
    reject = labels.reject_label
    predicted = [a.model_label for a in result.label_answers]
    confidence = [a.confidence for a in result.label_answers]
    reference = [M.read_label(c.reference, kind) for c in cases]
    cal = labels.calibration
    return {
        "reject_label": reject, "threshold": labels.threshold, "chosen_on": "validation",
        "reason": cal.reason if cal is not None else "not calibrated (no validation examples): no rejection",
        "validation": cal.to_json() if cal is not None else None,
        "test": {
            "with": dataclasses.asdict(rejection_point(predicted, confidence, reference, reject, labels.threshold)),
            "without": dataclasses.asdict(rejection_point(predicted, confidence, reference, reject, 0.0)),
            "curve": [dataclasses.asdict(p) for p in rejection_curve(predicted, confidence, reference, reject, [labels.threshold])],
            "reject_examples": sum(r == reject for r in reference),
        },
    }


def _general(info: Any, loaded: dict[str, LoadedModel], opts: EvalOptions, status: Callable[[str], None]) -> Any:
    """Distance of the tuned model from the base on generic prompts (the base loaded if no baseline did)."""
    tuned = loaded["tuned"]
    base = loaded.get("base") or loaded.get("prompted")
    if base is None:
        status(f"loading the base model {info.base_model} for the general-abilities check")
        base = load_target(str(resolve_base(info)), name="base")
        base = dataclasses.replace(base, template=tuned.template, system_prompt=tuned.system_prompt)
    status("general abilities: the base answers generic prompts, both models score the answers")
    return measure_general(base, tuned, batch_size=opts.batch_size)
