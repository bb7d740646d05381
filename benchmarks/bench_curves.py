"""Learning curves behind tunecraft's auto settings: method, LR and LoRA rank on BANKING77 subsets.

    python benchmarks/bench_curves.py --train-limit 1000 --test-limit 400 --time-budget 6m \
        --grid "lora-1e-3:train.method=lora train.lr=1e-3" "full-1e-4:train.method=full train.lr=1e-4"

Each grid entry is `name:key=value ...`: one `tunecraft train` on the same seeded slice of the
training messages with `--time-budget` and those overrides (everything else on auto), then one
`tunecraft eval` on the same seeded slice of the test messages (closed-label decoding, no general
check). Recorded per entry: test accuracy with its 95% interval, the validation curve from
`metrics.jsonl` (step, loss, token accuracy), the steps the budget allowed, where the time went.
The TF-IDF + logistic-regression accuracy on the same slices is the yardstick. Results:
benchmarks/results/curves-<time>.json (also printed), summarised in docs/quality.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from bench_quality import DATA, HERE, _events, machine, read_csv, sample, tunecraft, write_chat


def parse_entry(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    if not name or not overrides.strip():
        raise SystemExit(f"grid entry {text!r}: expected name:key=value ...")
    return name, overrides.split()


def val_curve(run: Path) -> list[dict[str, Any]]:
    """(step, loss, token accuracy, examples) of every validation pass the run logged."""
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"step": r.get("step"), "val_loss": r.get("val_loss"), "val_token_accuracy": r.get("val_token_accuracy"),
             "val_examples": r.get("val_examples")} for r in rows if r.get("type") == "eval"]


def run_entry(name: str, overrides: list[str], train_path: Path, test_path: Path, work: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    run = folder / "run"
    train_cmd = ["train", *overrides, "--data", str(train_path), "--out", str(run), "--time-budget", args.time_budget]
    train_s = tunecraft(*train_cmd, log=folder / "train.log")
    eval_cmd = ["eval", str(run), "--data", str(test_path), "--baselines", "", "--no-general", "--batch-size", "16"]
    eval_s = tunecraft(*eval_cmd, log=folder / "eval.log")
    payload = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    tuned = payload["systems"]["tuned"]
    return {
        "overrides": overrides, "train_wall_s": round(train_s, 1), "eval_wall_s": round(eval_s, 1),
        "method": summary.get("method"), "status": summary.get("status"), "steps": summary.get("steps"),
        "best_step": summary.get("best_step"), "best_val_loss": summary.get("best_val_loss"),
        "total_steps_planned": summary.get("total_steps"), "train_examples": summary.get("train_examples"),
        "time_breakdown": summary.get("time_breakdown"),
        "test_accuracy": tuned["metrics"].get("accuracy"),
        "test_accuracy_ci95": [tuned["main"]["low"], tuned["main"]["high"]],
        "macro_f1": tuned["metrics"].get("macro_f1"), "invalid_labels": tuned["metrics"].get("invalid_labels"),
        "tfidf_lr_accuracy": ((payload.get("classical") or {}).get("metrics") or {}).get("accuracy"),
        "val_curve": val_curve(run),
        "auto_settings": [r.get("message") for r in _events(run) if r.get("event") == "auto"],
    }


def paired(run_a: Path, run_b: Path) -> dict[str, Any]:
    """Two runs judged on the same test messages: who was right where the other was wrong, and
    the exact two-sided McNemar p-value of that split (intervals overlap long before it is 0.05)."""
    cases = [json.loads((run / "eval.json").read_text(encoding="utf-8"))["cases"] for run in (run_a, run_b)]
    if [(c["where"].rsplit(":", 1)[-1], c["prompt"]) for c in cases[0]] != [(c["where"].rsplit(":", 1)[-1], c["prompt"]) for c in cases[1]]:
        raise SystemExit("the two runs were not evaluated on the same test messages")
    only_a = sum(a["correct"]["tuned"] and not b["correct"]["tuned"] for a, b in zip(*cases))
    only_b = sum(b["correct"]["tuned"] and not a["correct"]["tuned"] for a, b in zip(*cases))
    n, k = only_a + only_b, min(only_a, only_b)
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"a": str(run_a), "b": str(run_b), "only_a_right": only_a, "only_b_right": only_b,
            "mcnemar_p": round(p_value, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--train-limit", type=int, default=1000)
    parser.add_argument("--test-limit", type=int, default=400)
    parser.add_argument("--time-budget", default="6m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", nargs="+", help="entries name:key=value ...")
    parser.add_argument("--compare", nargs=2, type=Path, metavar="RUN", help="paired test of two evaluated runs")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(paired(*args.compare)))
        return
    if not args.grid:
        parser.error("--grid (or --compare) is required")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work or HERE / "work" / f"curves-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    train = sample(read_csv(args.data_dir / "train.csv"), args.train_limit, args.seed)
    test = sample(read_csv(args.data_dir / "test.csv"), args.test_limit, args.seed + 1)
    train_path, test_path = write_chat(work / "train.jsonl", train), write_chat(work / "test.jsonl", test)
    out = HERE / "results" / f"curves-{stamp}.json"
    results: dict[str, Any] = {"benchmark": "bench_curves", "time": stamp, "machine": machine(),
                               "train_limit": args.train_limit, "test_limit": args.test_limit,
                               "time_budget": args.time_budget, "seed": args.seed, "entries": {}}
    for text in args.grid:
        name, overrides = parse_entry(text)
        results["entries"][name] = run_entry(name, overrides, train_path, test_path, work, args)
        out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")  # each entry kept as it lands
        e = results["entries"][name]
        print(f"{name}: acc {e['test_accuracy']:.3f} {e['test_accuracy_ci95']} steps {e['steps']} "
              f"best val {e['best_val_loss']}", flush=True)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
