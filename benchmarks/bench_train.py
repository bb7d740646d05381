"""Side-by-side training benchmark: TRL's SFTTrainer vs tunecraft, same model, data and settings.

    python benchmarks/bench_train.py [--train-examples 1000] [--test-examples 300] [--method full]

Both runs fine-tune the embedded default model (SmolLM2-135M-Instruct) on the same slice of
BANKING77 (../shared/data/banking77; customer message as the user turn, intent as the
assistant turn), with the same epochs, learning rate, effective batch, max length, loss mask
(assistant tokens only) and seed. Each runs in its own subprocess (so peak memory is its own),
one after the other. For each the script reports wall time, steady-state tokens/s (non-padding
tokens), warm-up time (first steps, including compilation), peak RSS, held-out loss (computed by
the same function for both models), and MFU against a bf16 matmul peak measured in the same
invocation. Results are printed and written to benchmarks/results/<timestamp>.json.

TRL is a benchmark-only dependency: `pip install -e ".[bench]"` (make bench does it).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BANKING = ROOT.parent / "shared" / "data" / "banking77"
WARMUP_STEPS = 3  # steps excluded from steady-state throughput (compile, allocator, caches)


# ----------------------------------------------------------------------------- data


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _chat(row: dict[str, str]) -> dict[str, Any]:
    return {"messages": [
        {"role": "user", "content": row["text"].strip()},
        {"role": "assistant", "content": row["category"]},
    ]}


def make_data(out: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, Path]:
    """A fixed, seeded slice of BANKING77 as chat JSONL."""
    rng = random.Random(seed)
    train = _rows(BANKING / "train.csv")
    test = _rows(BANKING / "test.csv")
    rng.shuffle(train)
    rng.shuffle(test)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train", train[:n_train]), ("test", test[:n_test])):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(_chat(r)) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------- peak


def matmul_peak_tflops(threads: int, precision: str) -> float:
    """Best matmul throughput of this machine right now in the compute dtype (the MFU denominator)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(10):  # best of 10 short trials: a busy moment lowers single trials
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e12)
    return best


# ----------------------------------------------------------------------------- runners


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_trl(args: argparse.Namespace, model_dir: Path, train_path: Path, out: Path) -> dict[str, Any]:
    """TRL's SFTTrainer as its users run it: its defaults (no evaluation, its own checkpoint
    cadence), the benchmark's precision, loss on the answer only, then `save_model`."""
    t_start = time.perf_counter()
    import torch
    import trl  # noqa: F401  (its import time is part of the run)
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    t_import = time.perf_counter()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    t_load = time.perf_counter()
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)

    trainer = _trl_trainer(args, model, tokenizer, train_path, out, callbacks=[Timer()])
    t_prepared = time.perf_counter()
    # Non-padding tokens TRL processes per epoch (its own tokenization, truncated to max_length).
    tokens = sum(min(len(x), args.max_length) for x in trainer.train_dataset["input_ids"])
    computed = _padded_positions(trainer, args)
    t0 = time.perf_counter()
    trainer.train()
    t_trained = time.perf_counter()
    if args.method == "lora":
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    t_end = time.perf_counter()
    result = _timing(step_times, t_trained - t0, tokens * args.epochs, len(step_times))
    result["computed_tokens"] = computed
    result["logit_tokens"] = computed  # its LM head runs on every position, padding included
    result["breakdown_s"] = {
        "import": round(t_import - t_start, 2), "load": round(t_load - t_import, 2),
        "tokenize": round(t_prepared - t_load, 2), "steps": round(t_trained - t0, 2),
        "eval": 0.0, "checkpoint": round(t_end - t_trained, 2),
    }
    return result


def _trl_trainer(args: argparse.Namespace, model: Any, tokenizer: Any, train_path: Path, out: Path,
                 callbacks: list[Any] | None = None, eval_path: Path | None = None) -> Any:
    """The SFTTrainer both the run and the scoring use (same tokenization and loss mask)."""
    from trl import SFTConfig, SFTTrainer

    def dataset(path: Path) -> Any:
        from datasets import Dataset

        rows = [json.loads(line) for line in path.read_text().splitlines()]
        # Conversational prompt/completion: TRL then masks the prompt (completion_only_loss).
        return Dataset.from_list([{"prompt": [r["messages"][0]], "completion": [r["messages"][1]]} for r in rows])

    train = dataset(train_path)
    config = SFTConfig(
        output_dir=str(out), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=8,
        gradient_accumulation_steps=1, max_length=args.max_length, bf16=args.precision == "bf16",
        use_cpu=True, seed=args.seed, logging_steps=10, report_to=[], lr_scheduler_type="cosine",
        warmup_steps=round(0.05 * math.ceil(len(train) / args.batch_size) * args.epochs),
        max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
    )
    peft_config = None
    if args.method == "lora" and eval_path is None:  # tunecraft's LoRA defaults, read from its config
        from peft import LoraConfig

        from tunecraft.config import LoraConfig as Defaults

        d = Defaults()
        peft_config = LoraConfig(r=d.r, lora_alpha=d.alpha, lora_dropout=d.dropout, target_modules=d.target_modules,
                                 task_type="CAUSAL_LM")
    return SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                      callbacks=callbacks or [], peft_config=peft_config,
                      eval_dataset=dataset(eval_path) if eval_path is not None else None)


def _padded_positions(trainer: Any, args: argparse.Namespace) -> int:
    """Positions TRL's batches hold (its collator pads each batch to its longest example)."""
    total = 0
    for batch in trainer.get_train_dataloader():
        total += int(batch["input_ids"].numel())
    return int(total * args.epochs)


def run_tunecraft(args: argparse.Namespace, model_dir: Path, train_path: Path, test_path: Path,
                  out: Path) -> dict[str, Any]:
    """`tunecraft train` as a user runs it: the CLI, its default evaluation and checkpoint
    cadence, the test slice as --val; the numbers come from the run directory it writes."""
    cmd = [str(Path(sys.executable).parent / "tunecraft"), "train", "--model", str(model_dir),
           "--data", str(train_path), "--val", str(test_path), "--method", args.method,
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--out", str(out),
           "--engine", args.engine, f"train.threads={args.threads}", f"train.precision={args.precision}"]
    wall, rss_mb = _run_measured(cmd)
    rows = [r for r in _jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    step_times = [rows[0]["elapsed_s"]] + [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    result = _timing(step_times, summary["time_breakdown"]["steps_s"], rows[-1]["tokens_seen"], len(rows))
    result["whole_run_s"], result["peak_rss_mb"] = round(wall, 2), rss_mb
    # Positions the model really ran (a shared prompt prefix once per micro-batch, no padding).
    result["computed_tokens"] = rows[-1]["tokens_computed"]
    result["logit_tokens"] = rows[-1]["tokens"]  # the LM head runs on loss-bearing positions only
    startup, parts = summary["startup_s"], summary["time_breakdown"]
    known = sum(startup.values()) + summary["wall_s"]
    result["breakdown_s"] = {
        "import": round(max(0.0, wall - known), 2),  # interpreter, imports and what follows training
        "load": round(startup.get("resolve_s", 0) + startup.get("load_model_s", 0), 2),
        "tokenize": round(startup.get("validate_s", 0) + startup.get("tokenize_s", 0), 2),
        "plan": round(startup.get("decide_s", 0) + startup.get("warmup_s", 0), 2),
        "kernel_probe": startup.get("kernel_probe_s", 0.0),
        "steps": parts["steps_s"], "eval": parts["eval_s"], "checkpoint": parts["checkpoint_s"],
    }
    result["background_write_s"] = summary.get("background_write_s")
    result["evaluations"] = sum(1 for r in _jsonl(out / "metrics.jsonl") if r["type"] == "eval")
    result["reported_val_loss"] = summary.get("final_val_loss_full") or summary.get("best_val_loss")
    result["best_step"], result["steps_total"] = summary.get("best_step"), summary.get("steps")
    return result


def _run_measured(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process; exits when it fails."""
    output, wall, rss, code = _run_child(cmd)
    if code != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd[:3])} ...")
    return wall, rss


def _run_child(cmd: list[str]) -> tuple[str, float, float, int]:
    """(stdout and stderr, wall seconds, peak RSS in MB, exit code) of one child process; its
    own peak (wait4), not the largest of every child so far (RUSAGE_CHILDREN)."""
    import tempfile

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return log.read(), wall, round(usage.ru_maxrss / 1024, 1), proc.returncode


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _timing(step_times: list[float], wall: float, tokens: int, steps: int) -> dict[str, Any]:
    warm = sum(step_times[:WARMUP_STEPS])
    steady_time = sum(step_times[WARMUP_STEPS:])
    steady_steps = max(1, len(step_times) - WARMUP_STEPS)
    per_step_tokens = tokens / max(1, steps)
    return {
        "wall_s": round(wall, 2),
        "train_tokens": tokens,
        "steps": steps,
        "warmup_s": round(warm, 2),
        "steady_tokens_per_s": round(per_step_tokens * steady_steps / steady_time, 1) if steady_time else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def heldout_loss(model_dir: Path, test_path: Path, threads: int) -> float:
    """The one scoring for both trained models: tunecraft's held-out loss on the test slice."""
    import torch

    from tunecraft.data.loader import load_examples
    from tunecraft.eval.heldout import heldout_loss as score, tokenize_for
    from tunecraft.serve.engine import load_target

    torch.set_num_threads(threads)
    lm = load_target(str(model_dir), dtype=torch.float32)
    return score(lm, tokenize_for(lm, load_examples(test_path))).loss


def trl_eval_loss(args: argparse.Namespace, model_dir: Path, train_path: Path, test_path: Path,
                  out: Path) -> float:
    """TRL's own `eval_loss` of a trained model on the test slice (its tokenization and mask),
    to tell a difference in the tokens scored from a difference in the models."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    if (model_dir / "model").is_dir():  # a tunecraft run directory: its deliverable
        model_dir = model_dir / "model"
    source = model_dir
    if (model_dir / "adapter_config.json").is_file():  # a LoRA run: score the merged model
        from peft import AutoPeftModelForCausalLM

        merged = AutoPeftModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).merge_and_unload()
        source = out / "merged"
        merged.save_pretrained(str(source))
        AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(source))
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    trainer = _trl_trainer(args, model, tokenizer, train_path, out, eval_path=test_path)
    return float(trainer.evaluate()["eval_loss"])


# ----------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    """Run one job in this process and print its JSON result on the last line."""
    model_dir, train_path, test_path, out = (Path(p) for p in args.child_paths)
    if args.child == "trl":
        result = run_trl(args, model_dir, train_path, out)
    else:  # score a trained model: the shared held-out loss and TRL's own eval_loss
        result = {"heldout_loss": round(heldout_loss(model_dir, test_path, args.threads), 4)}
        if args.child == "score+trl":
            result["trl_eval_loss"] = round(trl_eval_loss(args, model_dir, train_path, test_path, out), 4)
    print("RESULT " + json.dumps(result))


def _spawn(args: argparse.Namespace, job: str, paths: list[Path]) -> tuple[dict[str, Any], float, float]:
    """A child job's result, its wall time and its peak RSS."""
    cmd = [sys.executable, __file__, "--child", job, "--child-paths", *map(str, paths)]
    for key in ("train_examples", "test_examples", "epochs", "lr", "batch_size", "max_length",
                "seed", "threads", "method", "engine", "precision"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    print(f"running {job} ...", flush=True)
    output, wall, rss, code = _run_child(cmd)
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not lines:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"{job} failed")
    return json.loads(lines[-1][len("RESULT "):]), wall, rss


def run_side(args: argparse.Namespace, side: str, model_dir: Path, train_path: Path, test_path: Path,
             work: Path) -> dict[str, Any]:
    """One side's whole run, then its model scored by the shared function (and by TRL's eval)."""
    out = work / side
    if side == "trl":
        result, wall, rss = _spawn(args, "trl", [model_dir, train_path, test_path, out])
        result["whole_run_s"], result["peak_rss_mb"] = round(wall, 2), rss
        trained = out / "model"
    else:
        print("running tunecraft train ...", flush=True)
        result = run_tunecraft(args, model_dir, train_path, test_path, out)
        trained = out
    scores, _, _ = _spawn(args, "score+trl" if args.trl_eval else "score", [trained, train_path, test_path, work / f"{side}-score"])
    result.update(scores)
    return result


def _mfu(result: dict[str, Any], n_params: int, method: str, peak: float) -> float | None:
    """Model FLOPs utilization: 6·N (full) or ~4·N (LoRA) per example token over the peak.

    It credits every example token with the model's full cost; work a side skips (padding,
    logits of non-answer tokens, a prompt prefix computed once) raises it, so it can exceed
    what the hardware did. `hw_util` below counts the positions really computed instead.
    """
    tps = result.get("steady_tokens_per_s")
    if not tps:
        return None
    flops_per_token = (6 if method == "full" else 4) * n_params
    return round(flops_per_token * tps / (peak * 1e12), 4)


def _hw_util(result: dict[str, Any], n_params: int, n_head: int, method: str, peak: float) -> float | None:
    """FLOPs a side really did over the peak: the decoder's 6·N (or 4·N) on every position it
    ran (padding included, a shared prefix once) plus the LM head's on the positions whose
    logits it computed; at the steady rate."""
    tps, computed, tokens = result.get("steady_tokens_per_s"), result.get("computed_tokens"), result.get("train_tokens")
    logits = result.get("logit_tokens")
    if not (tps and computed and tokens and logits):
        return None
    per = 6 if method == "full" else 4
    flops = per * (n_params - n_head) * computed + per * n_head * logits  # for the whole run
    return round(flops * (tps / tokens) / (peak * 1e12), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-examples", type=int, default=1000)
    parser.add_argument("--test-examples", type=int, default=300)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--engine", choices=["fast", "reference"], default="fast")
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], default="auto",
        help="compute precision of BOTH sides; auto: bf16 where the CPU has native bf16 "
        "(AMX / AVX512-BF16), else fp32 (emulated bf16 matmuls run ~20x slower than fp32)",
    )
    parser.add_argument("--sides", default="trl,tunecraft", help="which runs, comma-separated")
    parser.add_argument("--no-trl-eval", dest="trl_eval", action="store_false",
                        help="skip TRL's own eval_loss of each trained model (the token-set check)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-paths", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from tunecraft.hardware import has_fast_bf16
    from tunecraft.models.resolve import resolve_model
    from tunecraft.models.facts import count_params

    if args.precision == "auto":
        args.precision = "bf16" if has_fast_bf16() else "fp32"

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.out / f"work-{stamp}"
    train_path, test_path = make_data(work / "data", args.train_examples, args.test_examples, args.seed)
    model_dir = resolve_model("smollm2-135m-instruct").path
    n_params = count_params(model_dir)
    n_head = _head_params(model_dir)
    peak = matmul_peak_tflops(args.threads, args.precision)
    results: dict[str, Any] = {}
    for side in args.sides.split(","):
        results[side] = run_side(args, side, model_dir, train_path, test_path, work)
    # The shared machine's speed drifts: the best of a measurement before and after the runs.
    peak = max(peak, matmul_peak_tflops(args.threads, args.precision))
    for side in results:
        results[side]["mfu"] = _mfu(results[side], n_params, args.method, peak)
        results[side]["hw_util"] = _hw_util(results[side], n_params, n_head, args.method, peak)
    report = {
        "when": stamp, "machine": _machine(), "threads": args.threads,
        "precision": args.precision, "matmul_peak_tflops": round(peak, 3), "n_params": n_params,
        "settings": {k: getattr(args, k) for k in ("train_examples", "test_examples", "epochs", "lr",
                                                    "batch_size", "max_length", "seed", "method", "engine",
                                                    "precision")},
        "results": results,
    }
    if "trl" in results and "tunecraft" in results:
        a, b = results["trl"], results["tunecraft"]
        share = (b["breakdown_s"]["eval"] + b["breakdown_s"]["checkpoint"]) / b["whole_run_s"]
        report["ratios"] = {
            "whole_run_tunecraft_over_trl": _ratio(b["whole_run_s"], a["whole_run_s"], 3),
            "steps_time_tunecraft_over_trl": _ratio(b["wall_s"], a["wall_s"], 3),
            "steady_tokens_per_s_tunecraft_over_trl": _ratio(b["steady_tokens_per_s"], a["steady_tokens_per_s"], 2),
            "eval_and_checkpoint_share_of_tunecraft_run": round(share, 3),
            "heldout_loss_rel_diff": round((b["heldout_loss"] - a["heldout_loss"]) / a["heldout_loss"], 4),
            "peak_rss_tunecraft_over_trl": _ratio(b["peak_rss_mb"], a["peak_rss_mb"], 3),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print(report)
    print(f"written: {path}")


def _ratio(x: float | None, y: float | None, digits: int) -> float | None:
    return round(x / y, digits) if x and y else None


def _head_params(model_dir: Path) -> int:
    """Parameters of the LM head's matmul (vocab x hidden; tied or not, it is one matmul)."""
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return int(cfg["vocab_size"]) * int(cfg["hidden_size"])


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


def _print(report: dict[str, Any]) -> None:
    cols = ["whole_run_s", "wall_s", "warmup_s", "steady_tokens_per_s", "mfu", "hw_util", "peak_rss_mb",
            "heldout_loss", "trl_eval_loss", "reported_val_loss"]
    print(f"\nmachine: {report['machine']}; {report['precision']} matmul peak "
          f"{report['matmul_peak_tflops']} TFLOP/s")
    print(f"{'side':<11}" + "".join(f"{c:>21}" for c in cols))
    for side, r in report["results"].items():
        print(f"{side:<11}" + "".join(f"{str(r.get(c)):>21}" for c in cols))
    for side, r in report["results"].items():
        print(f"  {side} breakdown (s): " + ", ".join(f"{k} {v}" for k, v in r.get("breakdown_s", {}).items()))
    for key, value in report.get("ratios", {}).items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
