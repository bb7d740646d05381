"""Side-by-side preference-tuning benchmark: TRL's DPOTrainer vs tunecraft's DPO, same everything.

    python benchmarks/bench_dpo.py [--train-pairs 300] [--test-pairs 100] [--method lora]

Pairs are built reproducibly from BANKING77 (../shared/data/banking77): the customer message is
the prompt, its intent the preferred answer, and a confusable wrong intent the rejected one (a
seeded pick among the three labels sharing the most words with the right one, e.g.
card_arrival vs card_delivery_estimate). Both sides fine-tune the embedded default model with
the sigmoid DPO loss at the same beta, epochs, learning rate, batch, max length, schedule and
seed, with the reference log-probs precomputed before training (TRL's
`precompute_ref_log_probs=True`: no second model copy on either side; with LoRA both use the
base with adapters disabled). Each side runs in its own subprocess, one after the other, with
a cold cache. Wall time counts everything after the process started: data preparation, model
loading, the reference pass and the steps. Held-out preference accuracy and DPO loss are
computed by the same function for both trained models (tunecraft.eval.preference against the
base model as reference). Results: benchmarks/results/dpo-<timestamp>.json.

The timing helpers are bench_train.py's (same columns). TRL: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_train import BANKING, _machine, _rows, _timing, matmul_peak_tflops  # noqa: E402


# ----------------------------------------------------------------------------- data


def _words(label: str) -> set[str]:
    return set(re.split(r"[_\s]+", label.lower())) - {"", "or", "a", "the", "of", "to", "is"}


def confusable(labels: list[str], rng: random.Random) -> dict[str, list[str]]:
    """For each label, the three other labels sharing the most words with it (ties: by name)."""
    out = {}
    for label in labels:
        ranked = sorted((x for x in labels if x != label),
                        key=lambda x: (-len(_words(x) & _words(label)), x))
        out[label] = ranked[:3]
    return out


def make_pairs(out: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, Path]:
    """Seeded BANKING77 slices as {"prompt", "chosen", "rejected"} JSONL."""
    rng = random.Random(seed)
    train, test = _rows(BANKING / "train.csv"), _rows(BANKING / "test.csv")
    near = confusable(sorted({r["category"] for r in train}), rng)
    rng.shuffle(train)
    rng.shuffle(test)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", train[:n_train]), ("test", test[:n_test])):
        path = out / f"{name}.jsonl"
        lines = [json.dumps({"prompt": r["text"].strip(), "chosen": r["category"],
                             "rejected": rng.choice(near[r["category"]])}) for r in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- runners


def _lora_config() -> Any:
    from peft import LoraConfig

    # tunecraft's LoRA defaults: r 16, alpha 32, every linear layer.
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def run_trl(args: argparse.Namespace, model_dir: Path, train_path: Path, out: Path) -> dict[str, Any]:
    """TRL DPOTrainer: sigmoid loss, reference log-probs precomputed, the benchmark's settings."""
    t_start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows
    ])
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)

    config = DPOConfig(
        output_dir=str(out), num_train_epochs=args.epochs, learning_rate=args.lr, beta=args.beta,
        loss_type=["sigmoid"], precompute_ref_log_probs=True,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_length=args.max_length, bf16=args.precision == "bf16", use_cpu=True, seed=args.seed,
        logging_steps=10, save_strategy="no", report_to=[], lr_scheduler_type="cosine",
        warmup_steps=round(0.05 * math.ceil(len(rows) / args.batch_size) * args.epochs),
        max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Timer()], peft_config=_lora_config() if args.method == "lora" else None)
    ds = trainer.train_dataset
    # Non-padding tokens of both sequences per pair, by TRL's own tokenization.
    tokens = sum(min(len(p) + len(c), args.max_length) + min(len(p) + len(r), args.max_length)
                 for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    trainer.train()
    wall = time.perf_counter() - t_start
    trained = trainer.model.merge_and_unload() if args.method == "lora" else trainer.model
    trained.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    return _timing(step_times, wall, int(tokens * args.epochs), len(step_times))


def run_tunecraft(args: argparse.Namespace, model_dir: Path, train_path: Path, out: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    from tunecraft.config import build_config
    from tunecraft.rundir import read_jsonl
    from tunecraft.train.loop import build, train

    cfg = build_config(values={
        "model.name": str(model_dir), "data.train": str(train_path), "data.val": str(train_path),
        "data.max_length": args.max_length, "train.method": args.method, "train.objective": "dpo",
        "train.dpo.beta": args.beta, "train.epochs": args.epochs, "train.lr": args.lr,
        "train.batch_size": args.batch_size, "train.seed": args.seed, "train.out": str(out),
        "train.threads": args.threads, "train.patience": None, "train.eval_every": 10_000,
        "train.save_every": 10_000, "train.engine": args.engine, "train.schedule": "cosine",
        "train.warmup_ratio": 0.05, "train.precision": args.precision,
    })
    plan, rt = build(cfg)
    # The loop's own validation is not what we time: 8 pairs.
    plan = dataclasses.replace(plan, val=plan.val[:8], eval_indices=tuple(range(min(8, len(plan.val)))))
    train(plan, rt)
    wall = time.perf_counter() - t_start
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    step_times = [rows[0]["elapsed_s"]] + [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    result = _timing(step_times, wall, rows[-1]["tokens_seen"], len(rows))
    result["computed_tokens"] = rows[-1]["tokens_computed"]  # each pair's prompt once, no padding
    return result


def heldout(trained: Path, base: Path, test_path: Path, beta: float, threads: int) -> dict[str, Any]:
    """The same scoring for both: preference accuracy and DPO loss against the base model."""
    import torch

    from tunecraft.data.loader import load_examples
    from tunecraft.eval.preference import compare
    from tunecraft.serve.engine import ModelCache, load_target

    torch.set_num_threads(threads)
    cache = ModelCache()
    tuned = load_target(str(trained), cache=cache, dtype=torch.float32)
    reference = load_target(str(base), cache=cache, dtype=torch.float32)
    return compare(tuned, reference, load_examples(test_path), beta)


# ----------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    model_dir, train_path, test_path, out = (Path(p) for p in args.child_paths)
    runner = run_trl if args.child == "trl" else run_tunecraft
    result = runner(args, model_dir, train_path, out)
    scored = heldout(out / "model" if args.child == "trl" else out, model_dir, test_path, args.beta, args.threads)
    tuned = scored["tuned"]
    result.update({"heldout_preference_accuracy": round(tuned["preference_accuracy"], 4),
                   "heldout_dpo_loss": round(tuned["dpo_loss"], 4),
                   "heldout_logp_accuracy": round(tuned["logp_accuracy"], 4),
                   "base_logp_accuracy": round(scored["base"]["logp_accuracy"], 4),
                   "heldout": scored})
    print("RESULT " + json.dumps(result))


def _spawn(args: argparse.Namespace, side: str, paths: list[Path], home: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", side, "--child-paths", *map(str, paths)]
    for key in ("train_pairs", "test_pairs", "epochs", "lr", "beta", "batch_size", "max_length",
                "seed", "threads", "method", "engine", "precision"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    # A cold cache for each side: nothing tokenized or scored before counts as free.
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TUNECRAFT_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets")}
    print(f"running {side} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{side} run failed")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=300)
    parser.add_argument("--test-pairs", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--method", choices=["full", "lora"], default="lora")
    parser.add_argument("--engine", choices=["fast", "reference"], default="fast")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="compute precision of BOTH sides; auto: bf16 where the CPU has native bf16, else fp32")
    parser.add_argument("--sides", default="trl,tunecraft", help="which runs, comma-separated")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-paths", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tunecraft.hardware import has_fast_bf16
    from tunecraft.models.resolve import resolve_model

    if args.precision == "auto":
        args.precision = "bf16" if has_fast_bf16() else "fp32"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f"work-dpo-{stamp}"
    train_path, test_path = make_pairs(work / "data", args.train_pairs, args.test_pairs, args.seed)
    model_dir = resolve_model("smollm2-135m-instruct").path
    peak = matmul_peak_tflops(args.threads, args.precision)
    results: dict[str, Any] = {}
    for side in args.sides.split(","):
        results[side] = _spawn(args, side, [model_dir, train_path, test_path, work / side], work / f"home-{side}")
    peak = max(peak, matmul_peak_tflops(args.threads, args.precision))
    report: dict[str, Any] = {
        "when": stamp, "machine": _machine(), "threads": args.threads, "precision": args.precision,
        "matmul_peak_tflops": round(peak, 3),
        "pairs": "BANKING77: message -> its intent preferred to a confusable wrong intent (seeded)",
        "settings": {k: getattr(args, k) for k in ("train_pairs", "test_pairs", "epochs", "lr", "beta", "batch_size",
                                                    "max_length", "seed", "method", "engine", "precision")},
        "results": results,
    }
    if "trl" in results and "tunecraft" in results:
        a, b = results["trl"], results["tunecraft"]
        report["ratios"] = {
            "wall_time_tunecraft_over_trl": round(b["wall_s"] / a["wall_s"], 3),
            "steady_tokens_per_s_tunecraft_over_trl": round(b["steady_tokens_per_s"] / a["steady_tokens_per_s"], 2),
            "peak_rss_tunecraft_over_trl": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
            "heldout_preference_accuracy_diff": round(b["heldout_preference_accuracy"] - a["heldout_preference_accuracy"], 4),
            "heldout_dpo_loss_diff": round(b["heldout_dpo_loss"] - a["heldout_dpo_loss"], 4),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dpo-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    cols = ["wall_s", "warmup_s", "steady_tokens_per_s", "peak_rss_mb", "heldout_preference_accuracy",
            "heldout_dpo_loss", "heldout_logp_accuracy", "base_logp_accuracy"]
    print(f"\nmachine: {report['machine']}; {report['precision']}")
    print(f"{'side':<11}" + "".join(f"{c:>29}" for c in cols))
    for side, r in results.items():
        print(f"{side:<11}" + "".join(f"{str(r.get(c)):>29}" for c in cols))
    for key, value in report.get("ratios", {}).items():
        print(f"  {key}: {value}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
