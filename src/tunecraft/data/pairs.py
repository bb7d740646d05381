"""Preference pairs as micro-batches: both answers of a pair, their prompt computed once.

A pair is two sequences, prompt + chosen and prompt + rejected. Every target of a micro-batch
is tagged with the sequence it scores (`seq_ids`: 2i for pair i's chosen answer, 2i + 1 for its
rejected one), so the loss can sum each answer's log-probabilities.

- padded (reference): the 2P sequences as right-padded rows, chosen and rejected alternating.
- packed (fast): one flat row. Each pair's common loss-free prompt is stored once and both
  answers attend to it (each answer is a document whose span holds the prompt's positions, as
  `data.batching` does for a prefix shared by a whole micro-batch; a prefix every sequence of
  the micro-batch shares, a system prompt, is stored once as well). The prompt's last token
  is not shared: its target is each answer's first token, which differs between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunecraft.data.batching import (
    Batch,
    doc_layout,
    live_length,
    padded_batches,
    shared_prefix_length,
    shifted_labels,
)
from tunecraft.data.render import IGNORE, TokenizedExample, TokenizedPair


@dataclass
class PairBatch:
    """One micro-batch of preference pairs."""

    batch: Batch  # the pairs' sequences in the engine's layout
    seq_ids: torch.Tensor  # (B, T) int64: the sequence each target scores (-1: no target)
    ref: torch.Tensor | None  # (P, 2) fp32 reference log-probs (chosen, rejected); None: not known
    n_pairs: int
    n_chosen_loss: int  # loss-bearing targets of the chosen answers (the SFT mix's divisor)

    @property
    def n_loss(self) -> int:
        return self.batch.n_loss

    @property
    def n_tokens(self) -> int:
        return self.batch.n_tokens

    @property
    def n_computed(self) -> int:
        return self.batch.n_computed

    def to(self, device: torch.device) -> PairBatch:
        if device.type == "cpu":
            return self
        ref = None if self.ref is None else self.ref.to(device)
        return PairBatch(self.batch.to(device), self.seq_ids.to(device), ref, self.n_pairs, self.n_chosen_loss)


def _ref(pairs: list[TokenizedPair]) -> torch.Tensor | None:
    if any(p.ref is None for p in pairs):
        return None
    return torch.tensor([p.ref for p in pairs], dtype=torch.float32)  # (P, 2)


def _chosen_loss(pairs: list[TokenizedPair]) -> int:
    return sum(1 for p in pairs for t in p.chosen.labels[1:] if t != IGNORE)


def padded_pair_batch(pairs: list[TokenizedPair], pad_id: int) -> PairBatch:
    """The reference layout: rows chosen_0, rejected_0, chosen_1, ... right-padded."""
    seqs = [s for p in pairs for s in p.sequences]
    (batch,) = padded_batches(seqs, list(range(len(seqs))), len(seqs), pad_id)
    rows = torch.arange(len(seqs)).unsqueeze(1).expand_as(batch.labels)
    seq_ids = torch.where(batch.labels != IGNORE, rows, torch.full_like(rows, -1))
    return PairBatch(batch, seq_ids, _ref(pairs), len(pairs), _chosen_loss(pairs))


def _first_loss(e: TokenizedExample) -> int:
    return next((j for j in range(1, len(e.labels)) if e.labels[j] != IGNORE), len(e.labels))


def pair_prefix(pair: TokenizedPair, live: tuple[int, int], start: int) -> int:
    """Tokens from the start that both sequences share and that bear no loss in either.

    Position t predicts token t+1, so k shared positions are loss-free only if labels 1..k are
    IGNORE in both; each sequence keeps at least one position of its own. At least `start`
    (the micro-batch's shared prefix, already common to both).
    """
    c, r = pair.chosen, pair.rejected
    limit = min(min(live) - 1, _first_loss(c) - 1, _first_loss(r) - 1)
    k = start
    while k < limit and c.input_ids[k] == r.input_ids[k]:
        k += 1
    return max(k, start)


def packed_pair_batch(pairs: list[TokenizedPair], share_prefix: bool = True) -> PairBatch:
    """The fast layout: one flat row, [shared prefix] + per pair: its prompt once, both answers."""
    seqs = [s for p in pairs for s in p.sequences]
    live = [live_length(e) for e in seqs]
    prefix = shared_prefix_length(seqs, live) if share_prefix else 0
    ids: list[int] = list(seqs[0].input_ids[:prefix])
    labels: list[int] = [IGNORE] * prefix
    positions: list[int] = list(range(prefix))
    seq_of: list[int] = [-1] * prefix
    spans: list[list[int]] = []  # per sequence: its flat positions, shared parts included
    for i, pair in enumerate(pairs):
        pair_live = (live[2 * i], live[2 * i + 1])
        k = pair_prefix(pair, pair_live, prefix) if share_prefix else prefix
        at = len(ids)
        ids += pair.chosen.input_ids[prefix:k]
        labels += [IGNORE] * (k - prefix)
        positions += range(prefix, k)
        seq_of += [-1] * (k - prefix)
        prompt = list(range(prefix)) + list(range(at, at + k - prefix))
        start = k
        for side, (e, n) in enumerate(zip(pair.sequences, pair_live)):
            own = len(ids)
            targets = shifted_labels(e.labels)[start:n]
            ids += e.input_ids[start:n]
            labels += targets
            positions += range(start, n)
            seq_of += [2 * i + side if t != IGNORE else -1 for t in targets]
            spans.append(prompt + list(range(own, own + n - start)))
    layout = doc_layout(spans, len(ids), prefix)
    tensor = lambda xs: torch.tensor([xs], dtype=torch.long)  # noqa: E731  (1, T)
    n_loss = sum(1 for t in labels if t != IGNORE)
    batch = Batch(tensor(ids), tensor(labels), tensor(positions), None, n_loss,
                  sum(len(e.input_ids) for e in seqs), layout)
    return PairBatch(batch, tensor(seq_of), _ref(pairs), len(pairs), _chosen_loss(pairs))


def pair_batches(
    pairs: list[TokenizedPair], indices: list[int], micro_batch_size: int, engine: str, pad_id: int
) -> list[PairBatch]:
    """The pairs at `indices` as micro-batches of `micro_batch_size` pairs in `engine`'s layout."""
    out = []
    for at in range(0, len(indices), micro_batch_size):
        group = [pairs[i] for i in indices[at : at + micro_batch_size]]
        out.append(packed_pair_batch(group) if engine == "fast" else padded_pair_batch(group, pad_id))
    return out
