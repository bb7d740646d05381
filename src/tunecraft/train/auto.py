"""Fill "auto" hyperparameters from the data and the machine, each with its reason.

Like a hosted fine-tuning service's auto settings: a user who knows nothing about learning
rates gets a run that works, and sees why each value was chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tunecraft.config import RunConfig
from tunecraft.data.batching import steps_per_epoch
from tunecraft.hardware import has_fast_bf16, usable_physical_cores
from tunecraft.train.runtime import local_world_size

LORA_MIN_PARAMS = 50_000_000  # below this, full fine-tuning is cheap and usually better
EVAL_MIN_EXAMPLES = 32  # a validation loss on fewer examples is mostly noise
# Of the steps' compute: what all validation of a run may cost, the periodic evaluations and the
# full pass at the end together (with checkpoints, issue #19's bound is 10% of the run).
VAL_SHARE = 0.05
FORWARD_SHARE = 1 / 3  # an evaluated example costs about a third of a trained one (forward only)
EVAL_MAX_COUNT, EVAL_MIN_COUNT = 10, 3  # a curve of fewer than 3 points shows no turn


@dataclass(frozen=True)
class Choice:
    field: str
    value: object
    reason: str


def _round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


# The LR and method defaults come from measured learning curves (docs/quality.md): on 900
# BANKING77 messages under one 6-minute budget, LoRA (r 64) at 1e-3 reached 0.828 test accuracy,
# at 5e-4 and 3e-3 (r 16) less than at 1e-3; full fine-tuning at 1e-4 and 2e-4 0.795-0.797,
# at 5e-5 0.675 (still learning when the budget ended).


def choose_method(n_params: int, quantize: str = "none") -> Choice:
    """`quantize`: lora.quantize; a 4-bit base (QLoRA) trains adapters whatever the size."""
    if quantize != "none":
        return Choice("train.method", "lora", f"lora.quantize={quantize}: QLoRA trains LoRA adapters over "
                      "the 4-bit base weights")
    if n_params >= LORA_MIN_PARAMS:
        return Choice("train.method", "lora", f"{n_params / 1e6:.0f}M parameters: LoRA adapters "
                      "beside frozen weights: measured as accurate as full fine-tuning per budget, "
                      "faster steps, small checkpoints (docs/quality.md); use --method full to train all")
    return Choice("train.method", "full", f"{n_params / 1e6:.1f}M parameters: small enough to train fully")


def choose_lr(method: str, objective: str = "sft") -> Choice:
    if objective == "dpo":
        # DPO starts from a model that already answers; its gradients grow with the answers'
        # summed log-probs, so it takes a tenth (LoRA) to a tenth-of-a-tenth (full) of SFT's LR.
        if method == "lora":
            return Choice("train.lr", 1e-4, "DPO with LoRA: a tenth of supervised LoRA's LR (1e-4)")
        return Choice("train.lr", 5e-6, "DPO on full weights moves pre-trained weights gently: 5e-6")
    if method == "lora":
        return Choice("train.lr", 1e-3, "LoRA adapters start at zero and need a high LR: 1e-3 "
                      "measured best of 5e-4, 1e-3, 3e-3 (docs/quality.md)")
    return Choice("train.lr", 1e-4, "full fine-tuning moves pre-trained weights: 1e-4 (measured: "
                  "5e-5 was still learning at the end of the budget, 2e-4 no better; docs/quality.md)")


def choose_epochs(n_train: int) -> Choice:
    if n_train <= 200:
        return Choice("train.epochs", 4.0, f"{n_train} examples: small data needs several passes")
    if n_train <= 1000:
        return Choice("train.epochs", 3.0, f"{n_train} examples: 3 passes")
    if n_train <= 5000:
        return Choice("train.epochs", 2.0, f"{n_train} examples: 2 passes")
    return Choice("train.epochs", 1.0, f"{n_train} examples: one pass is enough")


def epochs_for_steps(max_steps: int, n_train: int, batch_size: int) -> Choice:
    per_epoch = steps_per_epoch(n_train, batch_size)
    return Choice("train.epochs", max_steps / per_epoch, f"--max-steps {max_steps} at {per_epoch} steps per epoch")


def choose_batch_size(n_train: int) -> Choice:
    if n_train >= 160:
        return Choice("train.batch_size", 16, "16 examples per step")
    value = max(2, n_train // 10)
    return Choice("train.batch_size", value, f"{n_train} examples: {value} per step gives ~10 steps per epoch")


RAW_TEXT_WINDOW = 1024  # tokens: raw text longer than the window is split, not cut, so a longer one only costs memory


def choose_max_length(lengths: list[int], context: int, raw_text: bool = False) -> Choice:
    """`raw_text`: every example is a raw document (split into windows when longer)."""
    if not lengths:
        return Choice("data.max_length", min(512, context), "no data lengths known")
    ordered = sorted(lengths)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    if raw_text and min(context, p99) > RAW_TEXT_WINDOW:
        return Choice("data.max_length", RAW_TEXT_WINDOW, f"raw text (p99 {p99} tokens): longer documents "
                      f"are split into overlapping windows of {RAW_TEXT_WINDOW} tokens, so nothing is cut")
    value = min(context, max(64, _round_up(p99, 64)))
    return Choice("data.max_length", value, f"covers 99% of examples (p99 {p99} tokens), "
                  f"within the model's context of {context}")


def choose_micro_batch(batch_size: int, max_length: int, device_type: str, per_example: int = 1) -> Choice:
    """`per_example`: sequences per example (a preference pair runs two)."""
    budget = 4096 if device_type == "cpu" else 32768  # tokens per forward pass
    value = max(1, min(batch_size, budget // max(1, max_length * per_example)))
    pairs = " (a pair is two sequences)" if per_example == 2 else ""
    return Choice("train.micro_batch_size", value, f"~{budget} tokens per forward pass on {device_type}{pairs}")


def choose_compile() -> Choice:
    return Choice("train.compile", False, "eager: compiling measured 4-10% faster per step (2-core AMD "
                  "EPYC / AMX Xeon) for 12-54 s of compile time; set train.compile=true for long runs")


def _share_note(forward_share: float) -> str:
    if forward_share == FORWARD_SHARE:
        return ""
    return f"; an evaluated example measured at {forward_share:.2f} of a trained one"


def validation_budget(trained_examples: int, forward_share: float = FORWARD_SHARE) -> float:
    """How many validation examples a run may evaluate in all (the periodic evaluations and the
    full pass at the end together): VAL_SHARE of the steps' compute."""
    return VAL_SHARE / forward_share * trained_examples


def validation_cost(n_val: int, n_evals: int, per_eval: int) -> int:
    """Validation examples a run evaluates: each evaluation's subsample, and at the end the full
    pass, into which the last evaluation's subsample merges (it is not run twice)."""
    if per_eval >= n_val:
        return n_evals * n_val
    return max(0, n_evals - 1) * per_eval + n_val


def choose_eval_every(total_steps: int, trained_examples: int, n_val: int,
                      forward_share: float = FORWARD_SHARE) -> Choice:
    """About 10 evaluations, fewer when 10 of at least 32 examples each and the full pass at the
    end would cost more than ~5% of the steps (a 1,000-example run with 300 validation examples
    affords the fewest: 3); never fewer than 3. `forward_share`: what an evaluated example costs
    against a trained one (measured in a budget's warm-up)."""
    per_eval = min(n_val, EVAL_MIN_EXAMPLES) or 1
    budget = validation_budget(trained_examples, forward_share)
    if per_eval >= n_val:  # every evaluation is a full pass; none follows at the end
        affordable = int(budget / per_eval)
    else:
        affordable = int((budget - n_val) / per_eval) + 1 if budget >= n_val else 0
    count = min(total_steps, max(EVAL_MIN_COUNT, min(EVAL_MAX_COUNT, affordable)))
    value = max(1, math.ceil(total_steps / max(1, count)))
    if affordable >= EVAL_MAX_COUNT:
        return Choice("train.eval_every", value, f"about {EVAL_MAX_COUNT} evaluations over {total_steps} steps")
    final = f" and the full pass over {n_val} at the end" if per_eval < n_val else ""
    return Choice("train.eval_every", value, f"{count} evaluations over {total_steps} steps: more, at "
                  f"{per_eval} examples each{final}, would cost over {VAL_SHARE:.0%} of the steps"
                  f"{_share_note(forward_share)}")


def choose_eval_examples(n_val: int, trained_examples: int, n_evals: int,
                         forward_share: float = FORWARD_SHARE) -> Choice:
    """A fixed validation subsample such that the evaluations and the full pass at the end
    together cost ~5% of the steps' compute (an evaluated example ~1/3 of a trained one unless
    measured); never fewer than 32 examples, all of them when that fits."""
    budget = validation_budget(trained_examples, forward_share)
    if n_evals <= 1 or validation_cost(n_val, n_evals, n_val) <= budget:
        value = n_val
    else:
        value = min(n_val, max(EVAL_MIN_EXAMPLES, int((budget - n_val) / (n_evals - 1))))
    if value == n_val:
        return Choice("train.eval_examples", value, f"all {n_val} validation examples at each evaluation")
    head = f"{value} of {n_val} validation examples per evaluation, all {n_val} at the end"
    if budget < validation_cost(n_val, n_evals, EVAL_MIN_EXAMPLES):  # even the fewest cost more
        spent = validation_cost(n_val, n_evals, value) * forward_share / max(1, trained_examples)
        return Choice("train.eval_examples", value, f"{head}: the fewest, since the full pass over {n_val} "
                      f"costs more than the {VAL_SHARE:.0%} of the steps' compute aimed at (~{spent:.0%} with "
                      f"{n_evals} evaluations{_share_note(forward_share)})")
    return Choice("train.eval_examples", value, f"{head} (~{VAL_SHARE:.0%} of the steps' compute over {n_evals} "
                  f"evaluations and the full pass{_share_note(forward_share)})")


def choose_save_every() -> Choice:
    return Choice("train.save_every", None, "by wall clock: a checkpoint every train.save_interval_s "
                  "of training, at the end, and when stopped")


def choose_precision(device: torch.device, deterministic: bool) -> Choice:
    if deterministic:
        return Choice("train.precision", "fp32", "deterministic mode computes in fp32")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Choice("train.precision", "bf16", "this GPU computes bf16 natively")
        return Choice("train.precision", "fp32", "this GPU has no native bf16")
    if has_fast_bf16():
        return Choice("train.precision", "bf16", "this CPU has native bf16 matrix units (AMX or AVX-512 BF16)")
    return Choice("train.precision", "fp32", "this CPU has no native bf16: bf16 would be emulated, "
                  "~20x slower than fp32")


def choose_threads() -> Choice:
    cores, procs = usable_physical_cores(), local_world_size()
    value = max(1, cores // procs)
    where = f"{cores} physical cores" + (f" shared by {procs} processes" if procs > 1 else "")
    return Choice("train.threads", value, f"one thread per core: {where}")


def apply(cfg: RunConfig, choice: Choice) -> None:
    section, name = choice.field.split(".")
    setattr(getattr(cfg, section), name, choice.value)
