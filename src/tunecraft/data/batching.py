"""Which examples each optimizer step sees, and how they are laid out in tensors.

An optimizer step always sees the same examples whatever the layout (the step plan depends
only on the seed), so the padded reference layout and the packed fast layout compute the same
loss: the loss is normalized by the step's loss-bearing tokens, not per micro-batch.

- padded: micro-batches of `micro_batch_size` examples, right-padded, with an attention mask.
- packed: examples concatenated into rows of at most `row_tokens` tokens; position ids restart
  at 0 for each example and no attention mask is passed, which makes transformers build a
  per-document causal mask (no attention crosses examples).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from tunecraft.data.render import IGNORE, TokenizedExample


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, already shifted: labels[:, t] is the target after t
    position_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor | None  # (B, T) for padded layouts, None when packed
    n_loss: int  # loss-bearing targets in this micro-batch
    n_tokens: int  # real (non-padding) tokens

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(
            self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
            mask, self.n_loss, self.n_tokens,
        )


def plan_steps(n_examples: int, batch_size: int, total: int, seed: int) -> list[list[int]]:
    """Example indices for each of `total` optimizer steps: a fresh seeded shuffle each epoch.

    A fractional last epoch is cut short. A last partial batch of an epoch is kept (the loss
    is token-normalized, so a smaller step is still a correct step).
    """
    if n_examples == 0:
        return []
    plan: list[list[int]] = []
    epoch = 0
    while len(plan) < total:
        order = list(range(n_examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        for start in range(0, n_examples, batch_size):
            plan.append(order[start : start + batch_size])
            if len(plan) == total:
                break
        epoch += 1
    return plan


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def shifted_labels(labels: list[int]) -> list[int]:
    """Targets aligned with inputs: position t predicts token t+1; the last position predicts nothing."""
    return labels[1:] + [IGNORE]


def count_loss_tokens(example: TokenizedExample) -> int:
    return sum(1 for t in example.labels[1:] if t != IGNORE)


def padded_batches(
    examples: list[TokenizedExample], indices: list[int], micro_batch_size: int, pad_id: int
) -> list[Batch]:
    """The reference layout: right-padded micro-batches with an attention mask."""
    out = []
    for start in range(0, len(indices), micro_batch_size):
        group = [examples[i] for i in indices[start : start + micro_batch_size]]
        width = max(len(e.input_ids) for e in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, e in enumerate(group):
            n = len(e.input_ids)
            ids[row, :n] = torch.tensor(e.input_ids)
            labels[row, :n] = torch.tensor(shifted_labels(e.labels))
            mask[row, :n] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out.append(
            Batch(ids, labels, positions, mask, int((labels != IGNORE).sum()), int(mask.sum()))
        )
    return out


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of example lengths into rows of `row_tokens` (indices)."""
    rows: list[list[int]] = []
    space: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(space):
            if lengths[i] <= free:
                rows[r].append(i)
                space[r] -= lengths[i]
                break
        else:
            rows.append([i])
            space.append(row_tokens - lengths[i])
    return rows


def packed_batches(
    examples: list[TokenizedExample],
    indices: list[int],
    row_tokens: int,
    rows_per_micro: int,
    pad_id: int,
) -> list[Batch]:
    """The fast layout: examples packed into rows with per-example position ids.

    Rows are padded to the longest row of the micro-batch (a padding "document" with its own
    positions and no loss), so shapes stay few and static for the compiler.
    """
    group = [examples[i] for i in indices]
    longest = max(len(e.input_ids) for e in group)
    rows = pack_rows([len(e.input_ids) for e in group], max(row_tokens, longest))
    out = []
    for start in range(0, len(rows), rows_per_micro):
        chunk = rows[start : start + rows_per_micro]
        width = max(sum(len(group[i].input_ids) for i in row) for row in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(chunk), width), dtype=torch.long)
        n_tokens = 0
        for r, row in enumerate(chunk):
            at = 0
            for i in row:
                e = group[i]
                n = len(e.input_ids)
                ids[r, at : at + n] = torch.tensor(e.input_ids)
                labels[r, at : at + n] = torch.tensor(shifted_labels(e.labels))
                positions[r, at : at + n] = torch.arange(n)
                at += n
                n_tokens += n
            # Padding tail: a separate pseudo-document (positions restart at 0) bearing no loss.
            positions[r, at:] = torch.arange(width - at)
        out.append(Batch(ids, labels, positions, None, int((labels != IGNORE).sum()), n_tokens))
    return out
