"""Masked next-token cross-entropy, summed over loss-bearing targets.

The loop divides the sum by the loss-bearing tokens of the whole optimizer step (all
micro-batches, all ranks), so every target token weighs the same however the step is split.

Two implementations compute the same number:
- `reference`: the model's full logits (B, T, V), then cross-entropy. Plain and obviously right.
- `fast`: the decoder's hidden states (per-document attention over a flat packed row, see
  `train.attention`), gathered at loss-bearing positions only, projected
  through the LM head in chunks that are recomputed in backward, so full-vocabulary logits
  for the whole batch never exist in memory (49k vocab x 4k tokens would be 800 MB in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunecraft.data.batching import Batch
from tunecraft.data.render import IGNORE
from tunecraft.models.facts import unwrap
from tunecraft.train import attention
from tunecraft.train.linear import FastLinear, linear

CHUNK_TOKENS = 1024  # rows of the LM head computed at once in the fast path


@dataclass
class LossOut:
    loss_sum: torch.Tensor  # scalar, fp32: sum of -log p(target) over loss-bearing targets
    n_correct: torch.Tensor  # scalar: argmax == target count (for token accuracy)
    # Evaluation only (with_accuracy): per example of the micro-batch, its summed loss and its
    # loss-bearing targets, so an interval can treat examples (not micro-batches) as clusters.
    example_sums: torch.Tensor | None = None  # (examples,) fp32
    example_tokens: torch.Tensor | None = None  # (examples,) int64


def example_ids(batch: Batch) -> torch.Tensor:
    """The micro-batch's example of each loss-bearing target, in row-major order: (N,) int64.

    Padded: one example per row. Packed: an example's own tokens start where the positions
    stop rising (each starts again at 0, or at the shared prefix's length; the prefix itself
    bears no loss and counts with the first example).
    """
    mask = batch.labels != IGNORE
    if batch.layout is None:
        rows = torch.arange(batch.labels.shape[0], device=batch.labels.device)
        return rows.unsqueeze(1).expand_as(batch.labels)[mask]
    pos = batch.position_ids[0]
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] <= pos[:-1]
    return (torch.cumsum(starts.long(), 0) - 1)[mask[0]]


def _per_example(batch: Batch, target_losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and loss-bearing targets per example, from per-target losses in row-major order."""
    ids = example_ids(batch).to(target_losses.device)
    n = int(ids.max()) + 1 if ids.numel() else 0
    sums = torch.zeros(n, dtype=torch.float32, device=ids.device).index_add_(0, ids, target_losses.float())
    return sums.cpu(), torch.bincount(ids, minlength=n).cpu()


def supports_fast_path(model: Any) -> bool:
    """The fast path needs plain `lm_head(hidden)` logits (no soft-capping or logit scaling) and
    attention SDPA can compute (Gemma 2's soft-capped attention scores it cannot)."""
    cfg = unwrap(model).config
    return not any(
        getattr(cfg, name, None) not in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "attn_logit_softcapping")
    )


def reference_loss(model: Any, batch: Batch, with_accuracy: bool = False) -> LossOut:
    assert batch.layout is None, "the reference path takes padded batches"
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    ).logits  # (B, T, V)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    targets = batch.labels.reshape(-1)
    mask = targets != IGNORE
    n_correct = (flat.detach().argmax(-1)[mask] == targets[mask]).sum()
    if with_accuracy:  # evaluation: per-target losses, summed per example too
        losses = F.cross_entropy(flat[mask], targets[mask], reduction="none")
        return LossOut(losses.sum(), n_correct, *_per_example(batch, losses))
    loss_sum = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum")
    return LossOut(loss_sum, n_correct)


def _chunk_ce(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, onednn: bool) -> torch.Tensor:
    logits = linear(hidden, weight, None, onednn).float()  # (N, V)
    return F.cross_entropy(logits, targets, reduction="sum")


def sparse_embedding_grad(inner: Any) -> bool:
    """Whether the input embedding's gradient can be sparse (rows of this batch's tokens only).

    `nn.Embedding`'s backward builds a dense (vocab, hidden) gradient, 28M mostly-zero floats
    for the default model, zero-filled and then added to the tied LM head's gradient every
    micro-batch. A sparse one holds only the rows of the batch's tokens, and autograd adds
    it to the LM head's dense gradient (out of place: one copy of that gradient, which is
    why the measured gain is ~3% rather than the fill and add it removes). Only where that dense gradient exists (tied and
    trained), for a plain `nn.Embedding` (subclasses may scale their output), and on plain
    tensors (FSDP shards parameters; the embedding lookup is its module's business there).
    `densify_grads` covers a step whose LM head got no gradient.
    """
    embed, head = inner.get_input_embeddings(), inner.get_output_embeddings()
    return (
        type(embed) is torch.nn.Embedding
        and head is not None
        and embed.weight is head.weight
        and embed.weight.requires_grad
        and type(embed.weight) is torch.nn.Parameter
        and not (torch.distributed.is_available() and torch.distributed.is_initialized())
    )


def densify_grads(params: list[torch.nn.Parameter]) -> None:
    """Make sparse gradients dense (clipping, all-reduce and fused AdamW take dense ones)."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()


def decoder_hidden(model: Any, batch: Batch) -> torch.Tensor:
    """The decoder's final hidden states (B, T, H), per-document attention for packed rows."""
    inner = unwrap(model)
    mask, extra = batch.attention_mask, {}
    if batch.layout is not None:
        attention.enable(inner)
        extra[attention.LAYOUT_KWARG] = batch.layout
        # A flat row has no padding: an all-ones mask makes transformers skip building one.
        mask = torch.ones_like(batch.input_ids)
    if torch.is_grad_enabled() and sparse_embedding_grad(inner):
        embed = inner.get_input_embeddings()
        extra["inputs_embeds"] = F.embedding(
            batch.input_ids, embed.weight, padding_idx=embed.padding_idx, sparse=True
        )
    else:
        extra["input_ids"] = batch.input_ids
    return inner.get_decoder()(
        attention_mask=mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **extra,
    ).last_hidden_state


def fast_loss(model: Any, batch: Batch, with_accuracy: bool = False) -> LossOut:
    inner = unwrap(model)
    hidden = decoder_hidden(model, batch)  # (B, T, H)
    head = inner.get_output_embeddings()
    assert head.bias is None, "fast path assumes a bias-free LM head"
    mask = batch.labels != IGNORE
    h = hidden[mask]  # (N, H), only loss-bearing positions
    targets = batch.labels[mask]  # (N,)
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long)
    chunked = h.shape[0] > CHUNK_TOKENS  # one chunk's logits may stay alive for backward
    onednn = isinstance(head, FastLinear)  # the LM head's product like the other linears'
    if with_accuracy:  # evaluation: per-target losses (summed per example too) and accuracy
        return _evaluate_targets(batch, h, head.weight, targets, onednn)
    for start in range(0, h.shape[0], CHUNK_TOKENS):
        hc, tc = h[start : start + CHUNK_TOKENS], targets[start : start + CHUNK_TOKENS]
        if torch.is_grad_enabled() and chunked:
            # Recompute this chunk's logits in backward instead of keeping (N, V) alive.
            total = total + checkpoint(_chunk_ce, hc, head.weight, tc, onednn, use_reentrant=False)
        else:
            total = total + _chunk_ce(hc, head.weight, tc, onednn)
    return LossOut(total, correct)


def _evaluate_targets(batch: Batch, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, onednn: bool
                      ) -> LossOut:
    """Loss and accuracy from one LM-head product per chunk (evaluation: nothing kept for backward)."""
    losses, correct = [], torch.zeros((), dtype=torch.long)
    for start in range(0, h.shape[0], CHUNK_TOKENS):
        tc = targets[start : start + CHUNK_TOKENS]
        logits = linear(h[start : start + CHUNK_TOKENS], weight, None, onednn).float()
        losses.append(F.cross_entropy(logits, tc, reduction="none"))
        correct = correct + (logits.argmax(-1) == tc).sum().cpu()
    flat = torch.cat(losses) if losses else h.new_zeros((0,), dtype=torch.float32)
    return LossOut(flat.sum(), correct, *_per_example(batch, flat))


def compute_loss(model: Any, batch: Batch, engine: str, with_accuracy: bool = False) -> LossOut:
    """Summed masked cross-entropy of one micro-batch with the chosen implementation."""
    if engine == "fast" and supports_fast_path(model):
        return fast_loss(model, batch, with_accuracy)
    return reference_loss(model, batch, with_accuracy)


# ----------------------------------------------------------------------------- per-target log-probs


def _chunk_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, onednn: bool) -> torch.Tensor:
    logits = linear(hidden, weight, None, onednn).float()  # (N, V)
    return -F.cross_entropy(logits, targets, reduction="none")  # (N,)


def target_logps(model: Any, batch: Batch, engine: str) -> torch.Tensor:
    """log p(target) at every loss-bearing target of the micro-batch, in row-major order: (N,) fp32.

    Preference tuning sums these per answer. Same two implementations as the loss: the fast one
    projects only the loss-bearing positions through the LM head, in recomputed chunks.
    """
    mask = batch.labels != IGNORE
    targets = batch.labels[mask]  # (N,)
    if not (engine == "fast" and supports_fast_path(model)):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False).logits  # (B, T, V)
        return -F.cross_entropy(logits[mask].float(), targets, reduction="none")
    head = unwrap(model).get_output_embeddings()
    assert head.bias is None, "fast path assumes a bias-free LM head"
    h = decoder_hidden(model, batch)[mask]  # (N, H)
    onednn = isinstance(head, FastLinear)
    chunked = torch.is_grad_enabled() and h.shape[0] > CHUNK_TOKENS
    parts = []
    for start in range(0, h.shape[0], CHUNK_TOKENS):
        hc, tc = h[start : start + CHUNK_TOKENS], targets[start : start + CHUNK_TOKENS]
        if chunked:
            parts.append(checkpoint(_chunk_logps, hc, head.weight, tc, onednn, use_reentrant=False))
        else:
            parts.append(_chunk_logps(hc, head.weight, tc, onednn))
    return torch.cat(parts) if parts else h.new_zeros((0,), dtype=torch.float32)
