"""Held-out loss: mean cross-entropy of the reference answers, exactly as training scores them.

The same renderer, loss mask and loss function as training, so "validation loss" in training
and "held-out loss" here are the same quantity on different data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tunecraft.data.batching import padded_batches
from tunecraft.data.prepare import fit_length, window_overlap
from tunecraft.data.render import TokenizedExample, tokenize_example
from tunecraft.data.schema import Example
from tunecraft.train.loss import compute_loss


@dataclass(frozen=True)
class HeldoutLoss:
    loss: float  # mean over loss-bearing tokens
    perplexity: float
    token_accuracy: float
    tokens: int
    per_example: tuple[tuple[float, int], ...] = ()  # (loss sum, loss tokens) per example, when asked


def tokenize_for(lm: Any, examples: list[Example]) -> list[TokenizedExample]:
    """Tokenize examples with a loaded model's tokenizer, template and system prompt; a raw-text
    document longer than the model's context is scored as windows (as training splits it), not cut."""
    limit = int(getattr(lm, "context_length", 0) or 0) or None
    whole = [tokenize_example(e, lm.tokenizer, None, lm.template, lm.system_prompt) for e in examples]
    if limit is None:
        return whole
    return fit_length(whole, examples, limit, window_overlap(limit, None))


@torch.no_grad()
def heldout_loss(lm: Any, examples: list[TokenizedExample], batch_size: int = 8,
                 per_example: bool = False) -> HeldoutLoss:
    """Loss of `lm` (a serve.engine.LoadedModel: base or adapter selected) on tokenized examples;
    `per_example`: also each example's (loss sum, loss tokens), in order."""
    total, correct, count = 0.0, 0, 0
    sums: list[tuple[float, int]] = []
    indices = list(range(len(examples)))
    with lm.activate() as module:
        was_training = module.training
        module.eval()
        for batch in padded_batches(examples, indices, batch_size, lm.pad_token_id):
            batch = batch.to(lm.device)
            out = compute_loss(module, batch, "fast", with_accuracy=True)
            if per_example:
                sums += _example_sums(out, int(batch.input_ids.shape[0]))  # padded: a row per example
            total += float(out.loss_sum)
            correct += int(out.n_correct)
            count += batch.n_loss
        module.train(was_training)
    if count == 0:
        return HeldoutLoss(math.nan, math.nan, math.nan, 0, tuple(sums))
    mean = total / count
    return HeldoutLoss(mean, math.exp(min(mean, 50.0)), correct / count, count, tuple(sums))


def _example_sums(out: Any, n_examples: int) -> list[tuple[float, int]]:
    """(loss sum, loss tokens) of each example of a micro-batch; an example with no loss-bearing
    token (fewer ids than examples) gets (0, 0)."""
    got = list(zip(out.example_sums.tolist(), out.example_tokens.tolist()))
    return got + [(0.0, 0)] * (n_examples - len(got))

