"""Decoding constrained to a closed label set: a token trie and a tree-attention scorer.

Each label is the token sequence training taught for it (the answer segment exactly as the chat
template renders and training tokenized it) ending in the end-of-turn token, so no label's
sequence is a prefix of another's and every path from the root to a leaf is one label.

`score_labels` gives every label its full sequence log-probability, log p(label | prompt) summed
over its tokens with each token's log-softmax over the whole vocabulary, and the probability over
the set is a softmax over those. Cost: one forward pass over the prompts (packed, see below) with
a KV cache, then a few rounds over trie nodes only: each round feeds every node whose parent is
scored (with the sibling-free chain below it) in one forward pass, with a 4-D attention mask that
lets a node see its row's prompt, its ancestors and itself (positions = prompt length + depth),
so branches share their prefix's cache.

Pruning (`margin`): a greedy walk down the trie first gives a complete label; a branch whose
prefix log-prob is already `margin` nats below the best complete label cannot win (a prefix's
probability bounds the total of the labels under it), so it is not expanded, and its labels share
that bound evenly as their score (`exact` false). With `margin=None` every label is scored
exactly. The answer is the most probable label, which pruning never changes; its probability can
only be under-stated, by at most the pruned branches' bounds (each below e^-margin of the best).

Packing: the prompts of a batch and then each round's trie nodes are laid end to end in one row
(one cache row, a mask per query), so rows with few candidates pay for no padding; measured on a
77-label BANKING77 model, 16 prompts per batch: 604 -> 227 ms per prompt at margin 4. The
prompts' shared prefix (the template's system prompt and header: ~30 of a BANKING77 prompt's ~42
tokens on the default model) is laid down once and every prompt attends to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tunecraft.data.render import chat_segments, use_chat

# nats: a branch e^-4 (1.8%) times less likely than the best label is not expanded. Measured on a
# 77-label BANKING77 LoRA model (459 trie nodes), 48 test prompts (`score_batched`, batch 16),
# against exact scoring: 1498 ms per prompt exact, 502 at 8, 176 at 4, 99 at 0; the answer never
# changed; the top probability moved by 0.0005 (max 0.0014) at 8, 0.011 (max 0.030) at 4.
PRUNE_MARGIN = 4.0


# ----------------------------------------------------------------------------- the trie


def label_token_ids(tokenizer: Any, label: str, template: str, eos_ids: Sequence[int]) -> list[int]:
    """The tokens training taught for answering `label`: its answer segment, end-of-turn included."""
    if use_chat(tokenizer, template):  # type: ignore[arg-type]
        messages = [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": label, "weight": 1}]
        segment = next(text for text, loss in chat_segments(tokenizer, messages) if loss)
    else:
        segment = label + (tokenizer.eos_token or "")
    ids = list(tokenizer(segment, add_special_tokens=False)["input_ids"])
    if not ids or ids[-1] not in eos_ids:
        ids.append(int(eos_ids[0]))
    return ids


@dataclass
class LabelTrie:
    """Nodes are label-token prefixes; node i holds token[i] at depth[i] under parent[i] (-1: root)."""

    labels: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    token: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    children: list[dict[int, int]] = field(default_factory=list)
    label_of: list[int] = field(default_factory=list)  # the label a leaf ends, else -1
    root: dict[int, int] = field(default_factory=dict)  # first token -> node
    leaf: list[int] = field(default_factory=list)  # label index -> its last node
    under: list[int] = field(default_factory=list)  # node -> how many labels end below (or at) it

    @classmethod
    def build(cls, labels: Sequence[str], sequences: Sequence[Sequence[int]]) -> LabelTrie:
        trie = cls(tuple(labels), tuple(tuple(s) for s in sequences))
        seen: dict[tuple[int, ...], str] = {}
        for idx, seq in enumerate(trie.sequences):
            if not seq:
                raise ValueError(f"label {labels[idx]!r} has no tokens")
            if seq in seen:
                raise ValueError(f"labels {seen[seq]!r} and {labels[idx]!r} tokenize to the same tokens")
            seen[seq] = labels[idx]
            level, parent = trie.root, -1
            for d, tok in enumerate(seq):
                node = level.get(tok)
                if node is None:
                    node = len(trie.token)
                    trie.token.append(int(tok))
                    trie.parent.append(parent)
                    trie.depth.append(d)
                    trie.children.append({})
                    trie.label_of.append(-1)
                    level[tok] = node
                if d == len(seq) - 1:
                    if trie.children[node] or trie.label_of[node] >= 0:
                        raise ValueError(f"label {labels[idx]!r}: its tokens are a prefix of another label's")
                    trie.label_of[node] = idx
                    trie.leaf.append(node)
                elif trie.label_of[node] >= 0:
                    raise ValueError(f"label {labels[idx]!r}: another label's tokens are a prefix of it")
                level, parent = trie.children[node], node
        trie.under = [0] * len(trie.token)
        for leaf in trie.leaf:
            node = leaf
            while node >= 0:
                trie.under[node] += 1
                node = trie.parent[node]
        return trie

    def allowed(self, prefix: Sequence[int]) -> set[int]:
        """Tokens that may follow `prefix` (empty once a label is complete; ValueError off the trie)."""
        level = self.root
        for tok in prefix:
            if tok not in level:
                raise ValueError(f"token {tok} after {list(prefix)} is on no label's path")
            level = self.children[level[tok]]
        return set(level)

    def path(self, label: int) -> list[int]:
        """Nodes from the first token to the label's leaf."""
        out, node = [], self.leaf[label]
        while node >= 0:
            out.append(node)
            node = self.parent[node]
        return out[::-1]


def build_trie(tokenizer: Any, labels: Sequence[str], template: str, eos_ids: Sequence[int]) -> LabelTrie:
    return LabelTrie.build(labels, [label_token_ids(tokenizer, lab, template, eos_ids) for lab in labels])


# ----------------------------------------------------------------------------- scoring


@dataclass
class LabelScores:
    """One prompt's scores over the label set."""

    logprobs: list[float]  # per label: its sequence log-prob (an upper bound where not exact)
    probs: list[float]  # softmax of `logprobs`: sums to 1
    exact: list[bool]
    token_logprob: dict[int, float]  # node -> log-prob of its token given the prompt and its prefix
    top_logprobs: dict[int, dict[int, float]]  # node -> top-k tokens of the distribution that chose it

    @property
    def best(self) -> int:
        return max(range(len(self.probs)), key=lambda i: (self.logprobs[i], -i))


@dataclass
class _Row:
    start: int  # where its own prompt tokens (those after the shared prefix) begin in the cache
    length: int  # its prompt's tokens, the shared prefix included
    shared: int = 0  # the batch's shared prefix: cache slots [0, shared) hold it, once for all rows
    cum: dict[int, float] = field(default_factory=dict)  # node -> prefix log-prob through it
    tok: dict[int, float] = field(default_factory=dict)
    top: dict[int, dict[int, float]] = field(default_factory=dict)
    slot: dict[int, int] = field(default_factory=dict)  # fed node -> its KV-cache position
    best: float = -math.inf  # best complete label log-prob so far


def _record(trie: LabelTrie, row: _Row, parent: int, logp: torch.Tensor, top_k: int) -> None:
    """Scores of `parent`'s children from the (V,) log-softmax after it (-1: after the prompt)."""
    kids = trie.root if parent < 0 else trie.children[parent]
    base = 0.0 if parent < 0 else row.cum[parent]
    toks = list(kids)
    values = logp[torch.tensor(toks, device=logp.device)].tolist()
    top = None
    if top_k > 0:
        tv, ti = torch.topk(logp, top_k)
        top = dict(zip(ti.tolist(), tv.tolist()))
    for tok, value in zip(toks, values):
        node = kids[tok]
        row.tok[node] = value
        row.cum[node] = base + value
        if top is not None:
            row.top[node] = top
        if trie.label_of[node] >= 0:
            row.best = max(row.best, row.cum[node])


def sliding_window(module: Any) -> int | None:
    """The window of a model with local (sliding-window) layers beside full ones (Gemma 2/3), else None."""
    cfg = module.config
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ()
    return int(window) if window and "sliding_attention" in types else None


def new_cache(module: Any) -> Any:
    """The KV cache the scorer packs every prompt and label node into: one full-length layer per
    decoder layer, local layers included (their window is applied by the mask, by position,
    since a packed row's slots are not in position order)."""
    from transformers import DynamicCache

    return DynamicCache() if sliding_window(module) else DynamicCache(config=module.config)


def _masks(module: Any, mask: torch.Tensor, q_pos: Sequence[int], k_pos: Sequence[int],
           device: torch.device) -> Any:
    """The 4D boolean mask, or per layer type for a model with local layers: there a query also
    sees only keys less than the window before it."""
    window = sliding_window(module)
    if window is None:
        return mask.to(device)
    near = (torch.tensor(q_pos).unsqueeze(1) - torch.tensor(k_pos).unsqueeze(0)) < window
    return {"full_attention": mask.to(device), "sliding_attention": (mask & near).to(device)}


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least its last token of its own (whose
    output scores the first label token)."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _prompt_pass(module: Any, cache: Any, prompts: Sequence[Sequence[int]], device: torch.device,
                 positions: list[int]) -> tuple[list[_Row], torch.Tensor]:
    """All prompts packed into one row: their shared prefix (a chat template's system prompt
    and header, often most of a short prompt's tokens) once at the start, then each prompt's
    own tokens, which attend to that prefix and to themselves. No padding, one cache row that
    every later pass extends, the prefix computed once per batch; returns the rows and the
    (B, V) log-softmax after each prompt."""
    shared = shared_prefix(prompts)
    rows, ids, pos, start = [], list(prompts[0][:shared]), list(range(shared)), shared
    for p in prompts:
        rows.append(_Row(start, len(p), shared))
        ids += list(p[shared:])
        pos += range(shared, len(p))
        start += len(p) - shared
    mask = torch.zeros((1, 1, start, start), dtype=torch.bool)
    mask[0, 0, :shared, :shared] = torch.ones((shared, shared), dtype=torch.bool).tril()
    for row in rows:
        a, b = row.start, row.start + row.length - shared
        mask[0, 0, a:b, :shared] = True
        mask[0, 0, a:b, a:b] = torch.ones((b - a, b - a), dtype=torch.bool).tril()
    ends = torch.tensor([row.start + row.length - shared - 1 for row in rows], device=device)
    positions[:] = pos  # the position of every cached slot (sliding windows are by position)
    out = module(input_ids=torch.tensor([ids], device=device), attention_mask=_masks(module, mask, pos, pos, device),
                 position_ids=torch.tensor([pos], device=device), cache=cache, use_cache=True, logits_to_keep=ends)
    return rows, torch.log_softmax(out.logits[0].float(), dim=-1)


def _feed(module: Any, cache: Any, trie: LabelTrie, rows: list[_Row], todo: list[list[int]], kv_len: int,
          device: torch.device, top_k: int, positions: list[int]) -> int:
    """One forward pass over every row's `todo` nodes, packed into the one cache row (tree
    attention: a node sees its row's prompt, its ancestors and itself); returns the new cache length."""
    fed = [(r, node) for r, nodes in enumerate(todo) for node in nodes]
    k = len(fed)
    ids = torch.tensor([[trie.token[node] for _, node in fed]], dtype=torch.long)
    pos = torch.tensor([[rows[r].length + trie.depth[node] for r, node in fed]], dtype=torch.long)
    mask = torch.zeros((1, 1, k, kv_len + k), dtype=torch.bool)
    here = {(r, node): kv_len + q for q, (r, node) in enumerate(fed)}
    for q, (r, node) in enumerate(fed):
        row = rows[r]
        mask[0, 0, q, :row.shared] = True
        mask[0, 0, q, row.start:row.start + row.length - row.shared] = True
        mask[0, 0, q, kv_len + q] = True
        up = trie.parent[node]
        while up >= 0:  # an ancestor is in the cache, or earlier in this pass (a chain)
            mask[0, 0, q, row.slot[up] if up in row.slot else here[(r, up)]] = True
            up = trie.parent[up]
    q_pos = pos[0].tolist()
    positions += q_pos
    out = module(input_ids=ids.to(device), attention_mask=_masks(module, mask, q_pos, positions, device),
                 position_ids=pos.to(device), cache=cache, use_cache=True)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # (K, V)
    for q, (r, node) in enumerate(fed):
        rows[r].slot[node] = kv_len + q
        _record(trie, rows[r], node, logp[q], top_k)
    return kv_len + k


def _with_chain(trie: LabelTrie, node: int) -> list[int]:
    """`node` and the inner nodes below it that have no sibling: one pass can feed them all (each
    sees its ancestors earlier in the pass), where a round per depth would cost a forward each."""
    chain = [node]
    while len(trie.children[node]) == 1:
        (only,) = trie.children[node].values()
        if not trie.children[only]:  # a leaf: its score comes from its parent's output
            break
        chain.append(only)
        node = only
    return chain


def _greedy_todo(trie: LabelTrie, row: _Row) -> list[int]:
    """The next node of the greedy walk: the best known unfed inner node on the walk's path."""
    level, node = trie.root, -1
    while level:
        node = max(level.values(), key=lambda n: row.tok.get(n, -math.inf))
        if trie.label_of[node] >= 0:
            return []
        if node not in row.slot:
            return _with_chain(trie, node)
        level = trie.children[node]
    return []


def _frontier(trie: LabelTrie, row: _Row, margin: float | None, keep: set[int]) -> list[int]:
    """Scored, unfed inner nodes still able to hold the best label (or on a kept label's path)."""
    heads = [n for n, c in row.cum.items()
             if n not in row.slot and trie.children[n]
             and (margin is None or c >= row.best - margin or n in keep)]
    return [n for head in heads for n in _with_chain(trie, head)]


@torch.inference_mode()
def score_labels(module: Any, prompts: Sequence[Sequence[int]], trie: LabelTrie,
                 device: torch.device | str, margin: float | None = PRUNE_MARGIN, top_k: int = 0,
                 keep: Sequence[int] = ()) -> list[LabelScores]:
    """Every label's sequence log-prob after each prompt (a batch; see the module docstring).

    `keep`: label indices always scored exactly (the reject label, whose tokens may be answered).
    Nothing is padded: prompts and nodes are packed into one row.
    """
    assert prompts and all(prompts)
    device = torch.device(device)
    cache, positions = new_cache(module), []
    rows, first = _prompt_pass(module, cache, prompts, device, positions)
    for r, row in enumerate(rows):
        _record(trie, row, -1, first[r], top_k)
    kept = {n for lab in keep for n in trie.path(lab)}
    kv_len = rows[0].shared + sum(row.length - row.shared for row in rows)
    if margin is not None:  # a complete label first, so that pruning has a bound to prune against
        while any(todo := [_greedy_todo(trie, row) for row in rows]):
            kv_len = _feed(module, cache, trie, rows, todo, kv_len, device, top_k, positions)
    while any(todo := [_frontier(trie, row, margin, kept) for row in rows]):
        kv_len = _feed(module, cache, trie, rows, todo, kv_len, device, top_k, positions)
    return [_scores(trie, row) for row in rows]


def _scores(trie: LabelTrie, row: _Row) -> LabelScores:
    logprobs, exact = [], []
    for leaf in trie.leaf:
        node = leaf
        while node not in row.cum:  # pruned: the deepest scored prefix bounds its labels' mass
            node = trie.parent[node]
        # that prefix's probability is the most its labels can hold together: shared evenly, so a
        # pruned branch adds its bound to the set once, not once per label under it
        logprobs.append(row.cum[node] - math.log(trie.under[node]))
        exact.append(node == leaf)
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return LabelScores(logprobs, [w / total for w in weights], exact, row.tok, row.top)


def score_batched(module: Any, prompts: Sequence[Sequence[int]], trie: LabelTrie,
                  device: torch.device | str, batch_size: int = 8, margin: float | None = PRUNE_MARGIN,
                  top_k: int = 0, keep: Sequence[int] = ()) -> list[LabelScores]:
    """`score_labels` over many prompts, shortest first (less padding per batch), in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[LabelScores | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, scores in zip(chunk, score_labels(module, [prompts[i] for i in chunk], trie, device,
                                                 margin, top_k, keep)):
            out[i] = scores
    return [s for s in out if s is not None]
