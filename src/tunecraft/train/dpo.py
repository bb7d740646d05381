"""Preference tuning (DPO) inside the one training loop: loss, reference log-probs, metrics.

DPO (Rafailov et al., 2023) learns from pairs which answer is better. Per pair:

    loss = -log σ(β · [(π_c - ref_c) - (π_r - ref_r)])

where π_x is the trained model's summed log-probability of answer x's tokens and ref_x the
reference model's (the model before training). β·(π_x - ref_x) is answer x's implicit reward;
a pair is "won" when the chosen reward beats the rejected one. An optional supervised term
(`train.dpo.sft_weight`) adds the chosen answers' token cross-entropy.

Normalization matches the supervised loss: the DPO sum is divided by the pairs of the whole
optimizer step (all micro-batches, all ranks), the supervised term by the step's chosen-answer
tokens, so batch 8 x accumulation 1 is the same step as batch 1 x accumulation 8.

The reference log-probs are computed once, before training, and cached beside the tokenized
data (keyed by the token ids, the model's files, the precision and the engine). With LoRA the
reference is the same model with its adapters disabled; with full weights it is the model as
loaded, before the first step (the checkpoint of a resumed run is restored after this), so no
second copy of the model is ever held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tunecraft import paths
from tunecraft.data.batching import Batch
from tunecraft.data.pairs import PairBatch, pair_batches
from tunecraft.data.render import IGNORE, TokenizedPair
from tunecraft.durable import atomic_write
from tunecraft.train.loss import compute_loss, target_logps

# Order of the detached per-step statistics summed over micro-batches and ranks.
# A margin this small is float noise between two computations of the same log-probs (the
# policy's forward and the cached reference, batched differently per process count): a tie,
# not a win. Before the first update every margin is such noise.
TIE_MARGIN = 1e-5
STATS = ("correct", "margin", "reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected")


@dataclass
class PairOut:
    dpo_sum: torch.Tensor  # scalar fp32: sum over pairs of -log σ(β · margin)
    nll_sum: torch.Tensor  # scalar fp32: -sum of the chosen answers' token log-probs (SFT mix)
    stats: torch.Tensor  # (len(STATS),) fp32, detached: sums over the micro-batch's pairs
    pair_losses: torch.Tensor  # (P,) fp32, detached: each pair's DPO loss (for intervals)


def sequence_logps(model: Any, pb: PairBatch, engine: str) -> torch.Tensor:
    """Summed answer log-probs per pair: (P, 2), column 0 chosen, column 1 rejected."""
    logps = target_logps(model, pb.batch, engine)  # (N,)
    seq = pb.seq_ids[pb.batch.labels != IGNORE]  # (N,) which answer each target belongs to
    sums = logps.new_zeros(2 * pb.n_pairs).index_add(0, seq, logps)
    return sums.view(pb.n_pairs, 2)


def adapters_disabled(model: Any) -> contextlib.AbstractContextManager[Any]:
    """LoRA: the base model (peft's adapters off); full weights: the model as it is."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


def reference_of(model: Any, pb: PairBatch, engine: str) -> torch.Tensor:
    """The pairs' reference log-probs: cached ones, else computed now with adapters disabled.

    Computing them in the step is the uncached path (tests compare the two); with full weights
    it is exact only before the first optimizer step, which is why training caches them first.
    """
    if pb.ref is not None:
        return pb.ref
    was = model.training
    model.eval()  # reference scores without dropout, like the cached ones
    with torch.no_grad(), adapters_disabled(model):
        ref = sequence_logps(model, pb, engine)
    model.train(was)
    return ref


def pair_loss(model: Any, pb: PairBatch | Batch, engine: str, with_accuracy: bool = False,
              beta: float = 0.1) -> PairOut:
    """One micro-batch's summed DPO loss, chosen-answer NLL and statistics.

    A plain `Batch` is a distributed filler (no pairs): zero, but attached to the parameters.
    """
    if not isinstance(pb, PairBatch):
        zero = compute_loss(model, pb, engine).loss_sum * 0.0
        return PairOut(zero, zero, torch.zeros(len(STATS)), torch.zeros(0))
    ref = reference_of(model, pb, engine).to(torch.float32)
    policy = sequence_logps(model, pb, engine)  # (P, 2)
    rewards = beta * (policy - ref)  # (P, 2) implicit rewards
    margin = rewards[:, 0] - rewards[:, 1]  # (P,)
    per_pair = -F.logsigmoid(margin)  # (P,)
    dpo_sum = per_pair.sum()
    nll_sum = -policy[:, 0].sum()
    with torch.no_grad():
        d = policy.detach()
        stats = torch.stack([(margin > TIE_MARGIN).float().sum(), margin.sum(), rewards[:, 0].sum(),
                             rewards[:, 1].sum(), d[:, 0].sum(), d[:, 1].sum()]).detach().cpu()
    return PairOut(dpo_sum, nll_sum, stats, per_pair.detach().float().cpu())


def _metrics(dpo: float, n_pairs: float, stats: list[float], prefix: str = "") -> dict[str, float]:
    n = max(1.0, n_pairs)
    out = {"dpo_loss": dpo / n, "preference_accuracy": stats[0] / n, "reward_margin": stats[1] / n,
           "reward_chosen": stats[2] / n, "reward_rejected": stats[3] / n,
           "logp_chosen": stats[4] / n, "logp_rejected": stats[5] / n}
    return {f"{prefix}{k}": round(v, 6) for k, v in out.items()}


def accumulate(model: Any, batches: list[PairBatch], s: Any, rt: Any) -> tuple[float, dict[str, float]]:
    """Forward and backward over one step's micro-batches; returns (loss, metrics).

    Each micro-batch's loss is its DPO sum over the step's pairs (all ranks) plus the SFT mix
    over the step's chosen-answer tokens, so gradients equal one big batch's.
    """
    n_pairs, n_chosen = rt.dist.sum([sum(b.n_pairs for b in batches), sum(b.n_chosen_loss for b in batches)])
    compute = partial(pair_loss, beta=s.dpo_beta)
    dpo = nll = 0.0
    stats = torch.zeros(len(STATS), dtype=torch.float64)
    for batch in rt.dist.micro_batches(batches):
        out = rt.dist.loss(model, batch.to(rt.device), s.engine, compute=compute)
        loss = out.dpo_sum / max(1.0, n_pairs)
        if s.dpo_sft_weight:
            loss = loss + s.dpo_sft_weight * out.nll_sum / max(1.0, n_chosen)
        loss.backward()
        dpo += float(out.dpo_sum.detach())
        nll += float(out.nll_sum.detach())
        stats += out.stats.double()
    dpo, nll, *summed = rt.dist.sum([dpo, nll, *stats.tolist()])
    loss = dpo / max(1.0, n_pairs) + (s.dpo_sft_weight * nll / max(1.0, n_chosen) if s.dpo_sft_weight else 0.0)
    return loss, _metrics(dpo, n_pairs, summed)


def micro_batches(plan: Any, indices: list[int], pairs: list[TokenizedPair]) -> list[PairBatch]:
    s = plan.settings
    return pair_batches(pairs, indices, s.micro_batch_size, s.engine, plan.tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- evaluation


def evaluate_pairs(model: Any, plan: Any, rt: Any, indices: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Validation DPO loss (plus the SFT mix, as trained), preference accuracy, margins, log-probs.

    Returns the fields of the loop's `ValResult`: `accuracy` is the preference accuracy, and the
    interval is the pairs' loss's 95% half-width (each pair is one observation). The caller
    turns autograd off (`Runtime.without_grad`).
    """
    s = plan.settings
    was = model.training
    model.eval()
    chosen = list(range(len(plan.val))) if indices is None else list(indices)
    mine = rt.dist.share(chosen)
    per = s.micro_batch_size * 2
    batches = [b for at in range(0, len(mine), per) for b in micro_batches(plan, mine[at : at + per], plan.val)]
    compute = partial(pair_loss, beta=s.dpo_beta)
    losses: list[float] = []  # per-pair DPO losses (this rank), for the interval
    nll = 0.0
    n_chosen = 0
    stats = torch.zeros(len(STATS), dtype=torch.float64)
    for batch in rt.dist.micro_batches(batches):
        out = rt.dist.loss(model, batch.to(rt.device), s.engine, compute=compute)
        losses += out.pair_losses.tolist()
        n_chosen += batch.n_chosen_loss if isinstance(batch, PairBatch) else 0
        nll += float(out.nll_sum)
        stats += out.stats.double()
    dpo_total = sum(losses)
    dpo_total, nll, n_chosen_all, n_pairs, *summed = rt.dist.sum([dpo_total, nll, n_chosen, len(losses), *stats.tolist()])
    model.train(was)
    if n_pairs == 0:
        return {"loss": math.nan, "accuracy": math.nan, "examples": len(chosen), "ci95": None, "kind": "preference"}
    metrics = _metrics(dpo_total, n_pairs, summed, "val_")
    loss = dpo_total / n_pairs
    if s.dpo_sft_weight:
        loss += s.dpo_sft_weight * nll / max(1.0, n_chosen_all)
    ci95 = None
    if rt.world_size == 1 and len(losses) >= 4:
        mean = sum(losses) / len(losses)
        var = sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)
        ci95 = 1.96 * math.sqrt(var / len(losses))
    return {"loss": loss, "accuracy": metrics["val_preference_accuracy"], "examples": len(chosen),
            "ci95": ci95, "kind": "preference", "extra": metrics}


# ----------------------------------------------------------------------------- reference log-probs


def _model_fingerprint(model_dir: Path) -> str:
    """The model's files (names, sizes, modification times): a converted model dir never changes
    in place, and hashing hundreds of MB of weights on every run would cost seconds."""
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for f in sorted(p for p in model_dir.iterdir() if p.is_file()):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def reference_key(pairs: list[TokenizedPair], plan: Any, dtype: torch.dtype) -> str:
    """Cache key: every token and label of the pairs, the model's files, precision, engine."""
    h = hashlib.sha256()
    for p in pairs:
        for seq in p.sequences:
            h.update(np.asarray(seq.input_ids, dtype=np.int64).tobytes())
            h.update(np.asarray(seq.labels, dtype=np.int64).tobytes())
            h.update(b"|")
    h.update(json.dumps([_model_fingerprint(Path(plan.model.path)), str(dtype), plan.settings.engine,
                         plan.settings.trust_remote_code]).encode())
    return h.hexdigest()[:24]


def _entry(key: str) -> Path:
    return paths.data_cache_dir() / f"ref-logps-{key}.safetensors"


def load_reference(key: str, n: int) -> np.ndarray | None:
    from safetensors.numpy import load_file

    path = _entry(key)
    if not path.is_file():
        return None
    try:
        ref = load_file(str(path))["ref"]
    except Exception:  # torn or foreign entry: recompute
        return None
    return ref if ref.shape == (n, 2) else None


def store_reference(key: str, ref: np.ndarray) -> None:
    from safetensors.numpy import save_file

    atomic_write(_entry(key), lambda p: save_file({"ref": np.ascontiguousarray(ref, dtype=np.float32)}, str(p)))


def compute_reference(model: Any, plan: Any, rt: Any, pairs: list[TokenizedPair]) -> np.ndarray:
    """(N, 2) reference log-probs of `pairs`: each rank scores its share, the sums are shared."""
    s = plan.settings
    was = model.training
    model.eval()
    mine = rt.dist.share(list(range(len(pairs))))
    values = [0.0] * (2 * len(pairs))
    per = s.micro_batch_size * 2
    compute = _reference_out
    with rt.without_grad(s.method), adapters_disabled(model):
        for at in range(0, len(mine), per):
            chunk = mine[at : at + per]
            batches = micro_batches(plan, chunk, pairs)  # their own `ref` is not read here
            done = 0
            for batch in rt.dist.micro_batches(batches):
                ref = rt.dist.loss(model, batch.to(rt.device), s.engine, compute=compute)
                if isinstance(batch, PairBatch):
                    for j, (c, r) in enumerate(ref.tolist()):
                        i = chunk[done + j]
                        values[2 * i], values[2 * i + 1] = c, r
                    done += batch.n_pairs
    model.train(was)
    return np.asarray(rt.dist.sum(values), dtype=np.float64).reshape(len(pairs), 2)


def _reference_out(model: Any, batch: PairBatch | Batch, engine: str, with_accuracy: bool = False) -> torch.Tensor:
    if not isinstance(batch, PairBatch):
        return compute_loss(model, batch, "reference").loss_sum.new_zeros((0, 2))
    return sequence_logps(model, batch, engine).float().cpu()


def disable_dropout(model: Any) -> int:
    """Turns the model's own dropout off for DPO; returns how many places had it on.

    The reference log-probs are scored without dropout (eval mode). With dropout on in training,
    the policy's log-probs of the very same weights differ from them by noise: before the first
    step the margins are not 0, and every pair's gradient carries that noise instead of the
    preference (TRL's DPOTrainer turns dropout off by default for the same reason). Covers
    `nn.Dropout` modules and the attention-probability dropout Hugging Face attention modules
    keep as a float attribute. LoRA's own dropout (`lora.dropout`, 0 unless set) is left as set:
    at the start it multiplies a zero update, so it adds no such noise, and it was asked for.
    """
    changed = 0
    for name, module in model.named_modules():
        if "lora_dropout" in name:
            continue
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            changed += 1
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and value > 0:
                setattr(module, attr, 0.0)
                changed += 1
    return changed


def with_reference(plan: Any, rt: Any, model: Any, log: Any = None) -> Any:
    """The plan with every train and validation pair carrying its reference log-probs.

    Also turns the model's own dropout off (`disable_dropout`): the step's policy must score
    like the reference did. Must run before a resumed checkpoint is loaded (full weights: the
    model is the reference).
    """
    disable_dropout(model)
    t0 = time.perf_counter()
    sets, reused = {}, []
    for name in ("train", "val"):
        pairs = getattr(plan, name)
        key = reference_key(pairs, plan, rt.dtype)
        ref = load_reference(key, len(pairs))
        (misses,) = rt.dist.sum([float(ref is None)])  # every rank computes, or none does
        if misses:
            ref = compute_reference(model, plan, rt, pairs)
            if rt.is_main:
                store_reference(key, ref)
        else:
            reused.append(name)
        sets[name] = [dataclasses.replace(p, ref=(float(c), float(r))) for p, (c, r) in zip(pairs, ref.tolist())]
    dt = time.perf_counter() - t0
    if log is not None:
        how = "reused from the cache" if len(reused) == 2 else "computed once and cached"
        log.event("reference", f"reference log-probs of {len(plan.train)} + {len(plan.val)} pairs {how} "
                  f"({dt:.1f} s)", seconds=round(dt, 3), cached=len(reused) == 2)
    return dataclasses.replace(plan, train=sets["train"], val=sets["val"])
