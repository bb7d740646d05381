"""Which examples each optimizer step sees, and how they are laid out in tensors.

An optimizer step always sees the same examples whatever the layout (the step plan depends
only on the seed), so the padded reference layout and the packed fast layout compute the same
loss: the loss is normalized by the step's loss-bearing tokens, not per micro-batch.

- padded: micro-batches of `micro_batch_size` examples, right-padded, with an attention mask.
- packed: each micro-batch is ONE flat row of exactly its examples' tokens (no padding), with
  position ids restarting per example and a `DocLayout` that tells the attention which
  positions belong to which example (no attention crosses examples). A loss-free prefix that
  every example of the micro-batch shares (a system prompt) is stored once.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from tunecraft.data.render import IGNORE, TokenizedExample


@dataclass
class DocLayout:
    """Where each example of a flat packed row sits, for per-document attention.

    `buckets[b]` is (docs, L): the flat positions of each example in length class b (the
    shared prefix first, then its own tokens), right-padded by repeating the last position.
    With a shared prefix, the first bucket is the prefix alone (its queries computed once) and
    the examples' buckets compute queries from column `shared_prefix` on (their keys still hold
    the prefix); see `starts`. `out_index[t]` is the row of flat position t in the concatenated
    per-bucket outputs (docs * (L - start) rows per bucket, in bucket order).
    """

    buckets: list[torch.Tensor]
    out_index: torch.Tensor  # (T,)
    shared_prefix: int  # tokens stored once for every example (0: none)

    def starts(self) -> list[int]:
        """Per bucket, the first column whose queries it computes."""
        if not self.shared_prefix:
            return [0] * len(self.buckets)
        return [0] + [self.shared_prefix] * (len(self.buckets) - 1)

    def to(self, device: torch.device) -> DocLayout:
        return DocLayout([b.to(device) for b in self.buckets], self.out_index.to(device), self.shared_prefix)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, already shifted: labels[:, t] is the target after t
    position_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor | None  # (B, T) for padded layouts, None when packed
    n_loss: int  # loss-bearing targets in this micro-batch
    n_tokens: int  # the examples' tokens (padding excluded; a shared prefix counts per example)
    layout: DocLayout | None = None  # packed layout: where each example sits in the flat row

    @property
    def n_computed(self) -> int:
        """Token positions the model actually runs (padding included, a shared prefix once)."""
        return int(self.input_ids.numel())

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        layout = None if self.layout is None else self.layout.to(device)
        return Batch(
            self.input_ids.to(device), self.labels.to(device), self.position_ids.to(device),
            mask, self.n_loss, self.n_tokens, layout,
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


MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth the bookkeeping
MIN_BUCKET = 16  # attention blocks are at least this long (tiny examples share one bucket)


def live_length(example: TokenizedExample) -> int:
    """Positions that influence the loss: up to the last one whose target bears loss.

    Later positions predict nothing that is scored, and causal attention keeps every
    earlier position from seeing them, so dropping them changes neither loss nor gradients
    (the end-of-turn token itself is a target, so it stays). At least one position is kept.
    """
    targets = example.labels
    for t in range(len(example.input_ids) - 1, 0, -1):
        if targets[t] != IGNORE:
            return t  # position t-1 predicts token t: positions 0..t-1 are live
    return 1


def shared_prefix_length(examples: list[TokenizedExample], lengths: list[int] | None = None) -> int:
    """Tokens at the start of every example that are identical and bear no loss anywhere.

    Position t predicts token t+1, so a prefix of P positions is loss-free only if labels
    1..P are IGNORE in every example (label P is the target of the prefix's last position).
    Each example keeps at least one token of its own (of its first `lengths[i]` tokens).
    """
    if len(examples) < 2:
        return 0
    lengths = lengths or [len(e.input_ids) for e in examples]
    first = examples[0].input_ids
    limit = min(lengths) - 1
    for e in examples:
        first_loss = next((j for j in range(1, len(e.labels)) if e.labels[j] != IGNORE), len(e.labels))
        limit = min(limit, first_loss - 1)
    common = 0
    while common < limit and all(e.input_ids[common] == first[common] for e in examples):
        common += 1
    return common if common >= MIN_SHARED_PREFIX else 0


def _bucket_of(length: int) -> int:
    """Length class: the next power of two (so an example is padded to at most 2x in attention)."""
    return max(MIN_BUCKET, 1 << (length - 1).bit_length())


def _flat_batch(group: list[TokenizedExample], share_prefix: bool) -> Batch:
    """One micro-batch as a single flat row: [shared prefix] + each example's own live tokens."""
    live = [live_length(e) for e in group]
    prefix = shared_prefix_length(group, live) if share_prefix else 0
    ids: list[int] = list(group[0].input_ids[:prefix])
    labels: list[int] = [IGNORE] * prefix
    positions: list[int] = list(range(prefix))
    spans: list[list[int]] = []  # per example: its flat positions, shared prefix included
    for e, n in zip(group, live):
        at = len(ids)
        ids += e.input_ids[prefix:n]
        labels += shifted_labels(e.labels)[prefix:n]
        positions += range(prefix, n)
        spans.append(list(range(prefix)) + list(range(at, at + n - prefix)))
    layout = doc_layout(spans, len(ids), prefix)
    tensor = lambda xs: torch.tensor([xs], dtype=torch.long)  # noqa: E731  (1, T)
    n_loss = sum(1 for t in labels if t != IGNORE)
    n_tokens = sum(len(e.input_ids) for e in group)
    return Batch(tensor(ids), tensor(labels), tensor(positions), None, n_loss, n_tokens, layout)


def doc_layout(spans: list[list[int]], n_flat: int, prefix: int) -> DocLayout:
    """Gather indices per length bucket, and where each flat position's output comes from.

    Every span starts with the `prefix` shared by all (flat positions 0..prefix-1). Its
    queries are computed once, in a bucket of their own; the examples' buckets compute queries
    from column `prefix` on, over keys that still include the prefix. A later position in
    several spans (a preference pair's common prompt) is computed in each of them alike; its
    output is taken from the first example that holds it.
    """
    by_bucket: dict[int, list[int]] = {}
    owner: dict[int, int] = {}
    for doc, span in enumerate(spans):
        assert span[:prefix] == list(range(prefix)), "every span starts with the shared prefix"
        by_bucket.setdefault(_bucket_of(len(span)), []).append(doc)
        for flat in span[prefix:]:
            owner.setdefault(flat, doc)
    out_index = list(range(prefix)) + [0] * (n_flat - prefix)  # the prefix bucket's rows come first
    buckets = [torch.arange(prefix).unsqueeze(0)] if prefix else []  # the prefix's own bucket
    row_start = prefix  # first output row of the current bucket in the concatenated outputs
    for key in sorted(by_bucket):
        docs = by_bucket[key]
        width = max(len(spans[d]) for d in docs)
        index = torch.empty((len(docs), width), dtype=torch.long)
        for r, d in enumerate(docs):
            span = spans[d]
            # Padding repeats the last position: it sits after the real tokens, so causal
            # attention never lets a real query see it, and its own outputs are dropped.
            index[r] = torch.tensor(span + [span[-1]] * (width - len(span)))
            base = row_start + r * (width - prefix)
            for j, flat in enumerate(span[prefix:]):
                if owner[flat] == d:
                    out_index[flat] = base + j
        buckets.append(index)
        row_start += len(docs) * (width - prefix)
    return DocLayout(buckets, torch.tensor(out_index, dtype=torch.long), prefix)


def packed_batches(
    examples: list[TokenizedExample],
    indices: list[int],
    micro_batch_size: int,
    share_prefix: bool = True,
) -> list[Batch]:
    """The fast layout: each micro-batch of `micro_batch_size` examples as one flat row.

    No padding tokens at all; per-document attention comes from the batch's `DocLayout`
    (see `train.attention`). A loss-free prefix common to all examples of the micro-batch
    (a shared system prompt) is stored and computed once, and positions after an example's
    last scored target (see `live_length`) are left out.
    """
    out = []
    for start in range(0, len(indices), micro_batch_size):
        group = [examples[i] for i in indices[start : start + micro_batch_size]]
        out.append(_flat_batch(group, share_prefix))
    return out
