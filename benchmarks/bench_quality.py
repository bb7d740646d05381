"""Quality on a real routing task: tunecraft's defaults on BANKING77 within a time budget.

    python benchmarks/bench_quality.py [--time-budget 60m] [--train-limit N] [--test-limit N]

Two settings, each one `tunecraft train` with its own defaults plus `--time-budget` (no other
training flag: no --val, so tunecraft holds out its seeded 10% validation split), then one
`tunecraft eval` (closed-label decoding, the TF-IDF + logistic-regression baseline, the reject
threshold chosen on validation):

1. standard: all training messages (10,003), the test messages (3,080), the 77 intents as the
   assistant's answer. Reported: test accuracy, invalid labels, TF-IDF + LR accuracy.
2. out-of-scope: 10 intents (seeded) held out of training entirely, their test messages labelled
   `out_of_scope`; 100 training messages of 5 other intents (seeded) relabelled `out_of_scope`.
   Reported: reject recall and in-scope accuracy with the calibrated threshold, and without it.

`--train-limit` / `--test-limit` take seeded slices (for a quick check that the script works,
not for the numbers). Results: benchmarks/results/quality-<time>.json, also printed.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "banking77"
REJECT = "out_of_scope"
HELD_OUT_INTENTS = 10
RELABELLED_INTENTS = 5
RELABELLED_MESSAGES = 100


def read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [(row["text"].strip(), row["category"].strip()) for row in csv.DictReader(fh)]


def write_chat(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for text, label in rows:
            messages = [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


def sample(rows: list[tuple[str, str]], limit: int | None, seed: int) -> list[tuple[str, str]]:
    if limit is None or limit >= len(rows):
        return rows
    return random.Random(seed).sample(rows, limit)


def out_of_scope_split(train: list[tuple[str, str]], test: list[tuple[str, str]], intents: list[str],
                       seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict[str, Any]]:
    """The issue's out-of-scope setting, built from the same data (seeded)."""
    rng = random.Random(seed)
    chosen = rng.sample(sorted(intents), HELD_OUT_INTENTS + RELABELLED_INTENTS)
    held, relabel = set(chosen[:HELD_OUT_INTENTS]), set(chosen[HELD_OUT_INTENTS:])
    kept = [(t, y) for t, y in train if y not in held]
    candidates = [i for i, (_, y) in enumerate(kept) if y in relabel]
    flipped = set(rng.sample(candidates, min(RELABELLED_MESSAGES, len(candidates))))
    oos_train = [(t, REJECT if i in flipped else y) for i, (t, y) in enumerate(kept)]
    oos_test = [(t, REJECT if y in held else y) for t, y in test]
    info = {"held_out_intents": sorted(held), "relabelled_intents": sorted(relabel),
            "relabelled_messages": len(flipped), "train_messages": len(oos_train),
            "test_out_of_scope": sum(y == REJECT for _, y in oos_test)}
    return oos_train, oos_test, info


def tunecraft(*args: str, log: Path) -> float:
    """Run a tunecraft command (its output to `log`); returns its wall time."""
    cmd = [sys.executable, "-m", "tunecraft", *args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text(encoding="utf-8")[-6000:])
        raise SystemExit(f"failed: {' '.join(args[:2])} (log: {log})")
    return time.time() - t0


def run_setting(name: str, train: list[tuple[str, str]], test: list[tuple[str, str]], work: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    """Train with tunecraft's defaults plus the budget, then evaluate on the test messages."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = write_chat(folder / "train.jsonl", train), write_chat(folder / "test.jsonl", test)
    run = folder / "run"
    train_cmd = ["train", "--data", str(train_path), "--out", str(run), "--time-budget", args.time_budget]
    train_s = tunecraft(*train_cmd, log=folder / "train.log")
    eval_cmd = ["eval", str(run), "--data", str(test_path), "--baselines", args.baselines, "--batch-size", str(args.batch_size)]
    eval_s = tunecraft(*eval_cmd, log=folder / "eval.log")
    payload = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    labels = json.loads((run / "labels.json").read_text(encoding="utf-8")) if (run / "labels.json").is_file() else None
    tuned = payload["systems"]["tuned"]
    classical = payload.get("classical") or {}
    out: dict[str, Any] = {
        "train_messages": len(train), "test_messages": len(test),
        "commands": {"train": "tunecraft " + " ".join(train_cmd), "eval": "tunecraft " + " ".join(eval_cmd)},
        "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
        "train": {k: summary.get(k) for k in ("status", "method", "best_step", "best_val_loss", "wall_s", "train_examples", "val_examples")},
        "auto_settings": [r.get("message") for r in _events(run) if r.get("event") == "auto"],
        "labels": len(labels["labels"]) if labels else None,
        "test_accuracy": tuned["metrics"].get("accuracy"),
        "test_accuracy_ci95": [tuned["main"]["low"], tuned["main"]["high"]],
        "macro_f1": tuned["metrics"].get("macro_f1"),
        "invalid_labels": tuned["metrics"].get("invalid_labels"),
        "tfidf_lr_accuracy": (classical.get("metrics") or {}).get("accuracy"),
        "tfidf_lr_line": classical.get("line"),
        "general": (payload.get("general") or {}).get("line"),
        "run_dir": str(run),
    }
    reject = payload.get("reject")
    if reject:
        with_t, without = reject["test"]["with"], reject["test"]["without"]
        out["reject"] = {
            "threshold": reject["threshold"], "reason": reject["reason"],
            "reject_recall": with_t["reject_recall"], "reject_recall_without_threshold": without["reject_recall"],
            "in_scope_accuracy": with_t["in_scope_accuracy"], "in_scope_accuracy_without_rejection": without["in_scope_accuracy"],
            "test_reject_examples": reject["test"]["reject_examples"],
        }
    return out


def _events(run: Path) -> list[dict[str, Any]]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {"cpu": model, "logical_cpus": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA, help="BANKING77 folder with train.csv and test.csv")
    parser.add_argument("--time-budget", default="60m", help="passed to tunecraft train --time-budget")
    parser.add_argument("--train-limit", type=int, default=None, help="seeded slice of the training messages (quick checks)")
    parser.add_argument("--test-limit", type=int, default=None, help="seeded slice of the test messages (quick checks)")
    parser.add_argument("--settings", default="standard,oos", help="comma-separated: standard, oos")
    parser.add_argument("--baselines", default="", help="tunecraft eval --baselines (default: none, the tuned model only)")
    parser.add_argument("--batch-size", type=int, default=16, help="tunecraft eval --batch-size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="where runs go (default: benchmarks/work/quality-<time>)")
    args = parser.parse_args()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or HERE / "work" / f"quality-{stamp}"
    train_all, test_all = read_csv(args.data_dir / "train.csv"), read_csv(args.data_dir / "test.csv")
    intents = sorted({y for _, y in train_all})
    train, test = sample(train_all, args.train_limit, args.seed), sample(test_all, args.test_limit, args.seed + 1)
    results: dict[str, Any] = {
        "benchmark": "bench_quality", "time": stamp, "machine": machine(), "data": str(args.data_dir),
        "time_budget": args.time_budget, "train_limit": args.train_limit, "test_limit": args.test_limit,
        "full_data": args.train_limit is None and args.test_limit is None, "settings": {},
    }
    wanted = [s.strip() for s in args.settings.split(",") if s.strip()]
    if "standard" in wanted:
        results["settings"]["standard"] = run_setting("standard", train, test, work, args)
    if "oos" in wanted:
        oos_train, oos_test, info = out_of_scope_split(train, test, intents, args.seed)
        results["settings"]["oos"] = {"construction": info, **run_setting("oos", oos_train, oos_test, work, args)}
    out = HERE / "results" / f"quality-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
