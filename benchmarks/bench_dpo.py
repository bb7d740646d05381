"""Side-by-side preference-tuning benchmark: TRL's DPOTrainer vs tunecraft's DPO, same everything.

    python benchmarks/bench_dpo.py [--train-pairs 300] [--test-pairs 300] [--method lora] [--seed 42]
    python benchmarks/bench_dpo.py --summarize benchmarks/results/dpo-A.json dpo-B.json ...

Pairs are built reproducibly from BANKING77 (../shared/data/banking77): the customer message is
the prompt, its intent the preferred answer, and a confusable wrong intent the rejected one (a
seeded pick among the three labels sharing the most words with the right one, e.g.
card_arrival vs card_delivery_estimate). Both sides fine-tune the embedded default model with
the sigmoid DPO loss at the same beta, epochs, learning rate, batch, max length, schedule and
seed, with the reference log-probs precomputed before training (TRL's
`precompute_ref_log_probs=True`: no second model copy on either side; with LoRA both use the
base with adapters disabled). Like for like, and checked (the report's `alignment`): the same
token ids (tunecraft's rendering), the pairs in the same order, the same LoRA init, the same
learning rate at every step; `settings_by_side` lists every setting each side gets. The seed
changes the pairs (the slices, the wrong-answer pick), the order and the init on both sides.

Each side runs in its own subprocess, one after the other, with a cold cache. Wall time
counts everything after the process started: data preparation, model loading, the reference
pass and the steps. Held-out preference accuracy and DPO loss are computed by the same
function for both trained models (tunecraft.eval.preference against the base model as
reference), and `paired` is McNemar's exact test on the same held-out pairs (the pairs only
one side gets right). `--summarize` pools several seeds' results (per seed, means, the paired
test over all their pairs). Results: benchmarks/results/dpo-<timestamp>.json.

The timing helpers are bench_train.py's (same columns). TRL: `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
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


def _defaults() -> Any:
    from tunecraft.config import LoraConfig

    return LoraConfig()


def _lora_config() -> Any:
    from peft import LoraConfig

    from tunecraft.config import LoraConfig as Defaults

    d = Defaults()  # tunecraft's LoRA defaults (every linear layer but lm_head), read from its config
    return LoraConfig(r=d.r, lora_alpha=d.alpha, lora_dropout=d.dropout, target_modules=d.target_modules,
                      task_type="CAUSAL_LM")


def _stream_hash(seqs: list[tuple[list[int], int]]) -> str:
    """Hash of training sequences in training order: each as (ids through its answer, answer length)."""
    h = hashlib.sha256()
    for ids, n_answer in seqs:
        h.update(json.dumps([ids, n_answer]).encode())
    return h.hexdigest()[:16]


def _lora_hash(model: Any) -> str:
    """Hash of the LoRA A matrices (B starts at zero): equal on both sides = the same init."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_A" in name:
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _tunecraft_pairs(model_dir: Path, train_path: Path, max_length: int) -> tuple[list[Any], Any]:
    """The train pairs exactly as tunecraft tokenizes them (chat template, answer + <|im_end|>)."""
    from transformers import AutoTokenizer

    from tunecraft.data.loader import load_examples
    from tunecraft.data.render import tokenize_pair

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [tokenize_pair(e, tok, max_length) for e in load_examples(train_path)], tok


def _scored(e: Any) -> tuple[list[int], int]:
    """A tokenized sequence through its last answer token, and how many answer tokens it has."""
    from tunecraft.data.render import IGNORE

    marked = [j for j, t in enumerate(e.labels) if t != IGNORE]
    return list(e.input_ids[: marked[-1] + 1]), len(marked)


def tunecraft_order(n: int, args: argparse.Namespace) -> list[int]:
    """The pair order tunecraft trains in (its seeded shuffle); TRL is fed the same order."""
    from tunecraft.data.batching import plan_steps
    from tunecraft.train.plan import total_steps

    steps = plan_steps(n, args.batch_size, total_steps(args.epochs, n, args.batch_size, None), args.seed)
    return [i for step in steps for i in step]


def run_trl(args: argparse.Namespace, model_dir: Path, train_path: Path, out: Path) -> dict[str, Any]:
    """TRL DPOTrainer: sigmoid loss, reference log-probs precomputed, the benchmark's settings.

    Like for like with tunecraft: the same token ids (prompts rendered by the same chat
    template, answers ending at <|im_end|> as tunecraft's do, so TRL's conversational path's
    extra "\n" after <|im_end|> is not trained on), the same pair order (tunecraft's seeded
    shuffle through a sequential sampler), the same LoRA init (same seed; rounded to bf16 in a
    bf16 run as tunecraft's bf16 base makes peft draw it), the same per-step learning rates.
    """
    t_start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    pairs, tokenizer = _tunecraft_pairs(model_dir, train_path, args.max_length)
    order = tunecraft_order(len(pairs), args)

    def texts(pair: Any) -> dict[str, str]:
        (c_ids, n_c), (r_ids, n_r) = _scored(pair.chosen), _scored(pair.rejected)
        cut = len(c_ids) - n_c
        return {"prompt": tokenizer.decode(c_ids[:cut]), "chosen": tokenizer.decode(c_ids[cut:]),
                "rejected": tokenizer.decode(r_ids[len(r_ids) - n_r:])}

    data = Dataset.from_list([texts(pairs[i]) for i in order])
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    step_times: list[float] = []
    lrs: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()
            lrs.append(k["optimizer"].param_groups[0]["lr"])  # the rate this step uses

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.t0)

    config = DPOConfig(
        output_dir=str(out), num_train_epochs=args.epochs, learning_rate=args.lr, beta=args.beta,
        loss_type=["sigmoid"], precompute_ref_log_probs=True,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        max_length=args.max_length, bf16=args.precision == "bf16", use_cpu=True, seed=args.seed,
        logging_steps=10, save_strategy="no", report_to=[], lr_scheduler_type="cosine",
        warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, dataloader_num_workers=0,
        train_sampling_strategy="sequential",
    )
    torch.manual_seed(args.seed)  # what tunecraft's apply_lora does right before peft draws LoRA A
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Timer()], peft_config=_lora_config() if args.method == "lora" else None)
    if args.method == "lora" and args.precision == "bf16":
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_" in name:
                    p.copy_(p.to(torch.bfloat16).float())
    lora_init = _lora_hash(trainer.model) if args.method == "lora" else None
    ds = trainer.train_dataset
    seqs = [(list(p) + list(c), len(c)) for p, c in zip(ds["prompt_ids"], ds["chosen_ids"])]
    seqs_r = [(list(p) + list(r), len(r)) for p, r in zip(ds["prompt_ids"], ds["rejected_ids"])]
    stream = _stream_hash([x for pair in zip(seqs, seqs_r) for x in pair])
    # Non-padding tokens of both sequences per pair, by TRL's own tokenization.
    tokens = sum(min(len(a), args.max_length) + min(len(b), args.max_length) for (a, _), (b, _) in zip(seqs, seqs_r))
    trainer.train()
    wall = time.perf_counter() - t_start
    trained = trainer.model.merge_and_unload() if args.method == "lora" else trainer.model
    trained.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    result = _timing(step_times, wall, int(tokens * args.epochs), len(step_times))
    result["alignment"] = {"train_stream": stream, "lora_init": lora_init, "lrs": lrs,
                           "longest_sequence": max(len(a) for a, _ in seqs + seqs_r)}
    return result


def run_tunecraft(args: argparse.Namespace, model_dir: Path, train_path: Path, out: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    from tunecraft.config import build_config
    from tunecraft.rundir import read_jsonl
    from tunecraft.train.loop import build, build_model, train

    cfg = build_config(values={
        "model.name": str(model_dir), "data.train": str(train_path), "data.val": str(train_path),
        "data.max_length": args.max_length, "train.method": args.method, "train.objective": "dpo",
        "train.dpo.beta": args.beta, "train.epochs": args.epochs, "train.lr": args.lr,
        "train.batch_size": args.batch_size, "train.seed": args.seed, "train.out": str(out),
        "train.threads": args.threads, "train.patience": None, "train.eval_every": 10_000,
        "train.save_every": 10_000, "train.engine": args.engine, "train.schedule": "cosine",
        "train.warmup_ratio": 0.0, "train.precision": args.precision,
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
    # After the timing: what was trained on, in which order, from which LoRA init.
    order = tunecraft_order(len(plan.train), args)
    stream = _stream_hash([_scored(e) for i in order for e in plan.train[i].sequences])
    lora_init = _lora_hash(build_model(plan, rt)[0]) if args.method == "lora" else None
    result["alignment"] = {"train_stream": stream, "lora_init": lora_init, "lrs": [r["lr"] for r in rows],
                           "longest_sequence": max(len(_scored(e)[0]) for p in plan.train for e in p.sequences)}
    return result


def heldout(trained: Path, base: Path, test_path: Path, beta: float, threads: int) -> dict[str, Any]:
    """The same scoring for both: preference accuracy and DPO loss against the base model, and
    which held-out pairs the tuned model gets right (for the paired test between the sides)."""
    import torch

    from tunecraft.data.loader import load_examples
    from tunecraft.eval.preference import pair_logps, preference_metrics, tokenize_pairs
    from tunecraft.serve.engine import ModelCache, load_target

    torch.set_num_threads(threads)
    cache = ModelCache()
    tuned = load_target(str(trained), cache=cache, dtype=torch.float32)
    reference = load_target(str(base), cache=cache, dtype=torch.float32)
    pairs = tokenize_pairs(tuned, load_examples(test_path))
    ref, policy = pair_logps(reference, pairs), pair_logps(tuned, pairs)
    margin = (policy - ref)[:, 0] - (policy - ref)[:, 1]
    return {"base": preference_metrics(ref, None, beta), "tuned": preference_metrics(policy, ref, beta),
            "correct": [int(m > 0) for m in margin.tolist()]}


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
                   "heldout_correct": scored.pop("correct"), "heldout": scored})
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


def settings_by_side(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Every training setting that could differ, as each side gets it (checked where it can be:
    see `alignment`)."""
    common = {
        "loss": f"sigmoid DPO, beta {args.beta}, mean over the step's pairs, no label smoothing, no SFT term",
        "reference": "log-probs precomputed once before training, base model (LoRA: adapters disabled)",
        "optimizer": "AdamW betas (0.9, 0.999) eps 1e-8, weight decay 0",
        "lr": f"peak {args.lr}, cosine to 0 over the steps, no warmup (the same rate every step: alignment.lrs)",
        "grad_clip": 1.0,
        "batch": f"{args.batch_size} pairs per step, no accumulation, {args.epochs} epoch(s)",
        "order": "tunecraft's seeded shuffle (plan_steps, seed) on both (TRL: sequential sampler over that order)",
        "tokens": "tunecraft's rendering on both: the model's chat template (its default system prompt), "
                  "answer tokens = the label + <|im_end|> (alignment.train_stream)",
        "max_length": f"{args.max_length} (no pair reaches it: alignment.longest_sequence)",
        "lora": "tunecraft's defaults on both (r {0.r}, alpha {0.alpha:g}, dropout {0.dropout:g}, all linear layers "
                "but lm_head); A drawn from the same seed".format(_defaults())
                if args.method == "lora" else "none (full weights)",
        "model_dropout": "0 in the model's config (attention_dropout 0.0); TRL disable_dropout=True, tunecraft's DPO turns dropout off",
    }
    precision = {
        "trl": "fp32 weights, CPU autocast bf16 (HF Trainer bf16=True)" if args.precision == "bf16" else "fp32",
        "tunecraft": "bf16 frozen base, fp32 LoRA adapters (peft upcast)" if args.precision == "bf16" and args.method == "lora"
                     else ("fp32 master weights, autocast bf16" if args.precision == "bf16" else "fp32"),
    }
    return {side: {**common, "precision": precision[side]} for side in ("trl", "tunecraft")}


def alignment(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What the two sides trained on, compared: the same tokens in the same order, the same
    LoRA init, the same learning rate at every step."""
    lr_diff = max((abs(x - y) for x, y in zip(a["lrs"], b["lrs"])), default=0.0)
    return {"same_train_tokens_and_order": a["train_stream"] == b["train_stream"],
            "same_lora_init": a["lora_init"] == b["lora_init"],
            "same_steps": len(a["lrs"]) == len(b["lrs"]),
            "max_lr_diff": lr_diff,
            "longest_sequence": {"trl": a["longest_sequence"], "tunecraft": b["longest_sequence"]}}


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """McNemar on the same held-out pairs: only_a = TRL right and tunecraft wrong, only_b the reverse."""
    from tunecraft.eval.preference import paired_test

    out = paired_test([bool(x) for x in a["heldout_correct"]], [bool(x) for x in b["heldout_correct"]])
    out["only_trl"], out["only_tunecraft"] = out.pop("only_a"), out.pop("only_b")
    return out


def summarize(files: list[Path], out: Path) -> None:
    """Several seeds' results: per seed, the means, and the paired test pooled over all pairs."""
    import statistics

    from tunecraft.eval.preference import paired_test

    runs = [json.loads(f.read_text()) for f in files]
    per_seed, a_all, b_all = [], [], []
    for f, r in zip(files, runs):
        a, b = r["results"]["trl"], r["results"]["tunecraft"]
        per_seed.append({"file": f.name, "seed": r["settings"]["seed"], "alignment": r.get("alignment"),
                         "trl_accuracy": a["heldout_preference_accuracy"],
                         "tunecraft_accuracy": b["heldout_preference_accuracy"],
                         "trl_dpo_loss": a["heldout_dpo_loss"], "tunecraft_dpo_loss": b["heldout_dpo_loss"],
                         "wall_ratio": r["ratios"]["wall_time_tunecraft_over_trl"], "paired": r["paired"]})
        a_all += a["heldout_correct"]
        b_all += b["heldout_correct"]
    mean = lambda key: round(statistics.mean(p[key] for p in per_seed), 4)  # noqa: E731
    pooled = paired_test([bool(x) for x in a_all], [bool(x) for x in b_all])
    pooled["only_trl"], pooled["only_tunecraft"] = pooled.pop("only_a"), pooled.pop("only_b")
    summary = {
        "seeds": [p["seed"] for p in per_seed], "settings": runs[0]["settings"],
        "settings_by_side": runs[0].get("settings_by_side"), "per_seed": per_seed,
        "mean": {k: mean(k) for k in ("trl_accuracy", "tunecraft_accuracy", "trl_dpo_loss", "tunecraft_dpo_loss",
                                      "wall_ratio")},
        "paired_pooled": pooled,
    }
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"dpo-seeds-{stamp}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: summary[k] for k in ("seeds", "mean", "paired_pooled")}, indent=2))
    print(f"written: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=300)
    parser.add_argument("--test-pairs", type=int, default=300)
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
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="RESULT_JSON",
                        help="no runs: pool these dpo-*.json results (one per seed) into dpo-seeds-<stamp>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-paths", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.summarize:
        summarize(args.summarize, args.out)
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
        "settings_by_side": settings_by_side(args),
        "results": results,
    }
    if "trl" in results and "tunecraft" in results:
        a, b = results["trl"], results["tunecraft"]
        report["ratios"] = {
            "wall_time_tunecraft_over_trl": round(b["wall_s"] / a["wall_s"], 3),
            "steady_tokens_per_s_tunecraft_over_trl": round(b["steady_tokens_per_s"] / a["steady_tokens_per_s"], 2)
            if a["steady_tokens_per_s"] and b["steady_tokens_per_s"] else None,  # None: too few steps
            "peak_rss_tunecraft_over_trl": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3),
            "heldout_preference_accuracy_diff": round(b["heldout_preference_accuracy"] - a["heldout_preference_accuracy"], 4),
            "heldout_dpo_loss_diff": round(b["heldout_dpo_loss"] - a["heldout_dpo_loss"], 4),
        }
        report["alignment"] = alignment(a["alignment"], b["alignment"])
        report["paired"] = paired(a, b)
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
    for key in ("alignment", "paired"):
        if key in report:
            print(f"  {key}: {json.dumps(report[key])}")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
