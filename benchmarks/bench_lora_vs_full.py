"""LoRA vs full fine-tuning step time of tunecraft, paired, each in its own process.

    python benchmarks/bench_lora_vs_full.py [--pairs 5] [--steps 10]

Times tunecraft's optimizer steps (`train.loop.measure_step_time`: the median over `--steps`
steps after a first one) on the embedded default model and the same BANKING77 slice as
`bench_train.py`, for full fine-tuning and for LoRA, in fresh processes that alternate
(full, LoRA, LoRA, full, ...), so a shared machine's drift hits both alike. Both see the same
batches (same seed), so the ratio of step times is the ratio of tokens/s. Prints each pair's
ratio and their median, and writes benchmarks/results/lora-vs-full-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import make_data  # noqa: E402  (the same data slice as the TRL comparison)

LR = {"full": 5e-5, "lora": 1e-3}


def child(method: str, train_path: Path, out: Path, steps: int, threads: int) -> None:
    """Median step seconds of one method, printed as the last line."""
    from tunecraft.config import build_config
    from tunecraft.models.resolve import resolve_model
    from tunecraft.train.loop import build, measure_step_time

    cfg = build_config(values={
        "model.name": str(resolve_model("smollm2-135m-instruct").path), "data.train": str(train_path),
        "data.val": str(train_path), "data.max_length": 128, "train.method": method,
        "train.lr": LR[method], "train.batch_size": 16, "train.seed": 42, "train.out": str(out),
        "train.threads": threads, "train.precision": "auto",
    })
    plan, rt = build(cfg)
    print("RESULT " + json.dumps({"method": method, "step_s": measure_step_time(plan, rt, steps)}))


def _run(method: str, train_path: Path, work: Path, steps: int, threads: int) -> float:
    cmd = [sys.executable, __file__, "--child", method, "--train", str(train_path),
           "--work", str(work), "--steps", str(steps), "--threads", str(threads)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{method} run failed")
    return float(json.loads(lines[-1][len("RESULT "):])["step_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.train, args.work / args.child, args.steps, args.threads)
        return
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f"work-lora-vs-full-{stamp}"
    train_path, _ = make_data(work / "data", 1000, 0, 42)
    pairs: list[dict[str, Any]] = []
    for i in range(args.pairs):
        order = ["full", "lora"] if i % 2 == 0 else ["lora", "full"]
        times = {m: _run(m, train_path, work, args.steps, args.threads) for m in order}
        ratio = times["full"] / times["lora"]
        pairs.append({"full_step_s": round(times["full"], 3), "lora_step_s": round(times["lora"], 3),
                      "lora_speedup": round(ratio, 3)})
        print(f"pair {i + 1}: full {times['full']:.2f} s/step, LoRA {times['lora']:.2f} s/step, "
              f"LoRA {ratio:.2f}x", flush=True)
    speedups = [p["lora_speedup"] for p in pairs]
    report = {"when": stamp, "steps": args.steps, "threads": args.threads, "pairs": pairs,
              "median_lora_speedup": round(statistics.median(speedups), 3),
              "min": min(speedups), "max": max(speedups)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"lora-vs-full-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"LoRA tokens/s over full, median of {args.pairs} pairs: {report['median_lora_speedup']:.2f}x "
          f"(range {report['min']:.2f}-{report['max']:.2f})\nwritten: {path}")


if __name__ == "__main__":
    main()
