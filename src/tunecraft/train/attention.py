"""Per-document ("varlen") attention over one flat sequence of packed examples.

The fast layout (`data.batching.packed_batches`) lays a micro-batch out as ONE row of exactly
the examples' tokens, no padding, so every linear layer (most of the FLOPs) runs on real tokens
only. Attention is the one place where examples must not see each other: here each example's
queries, keys and values are gathered into a (docs, heads, length, dim) block, grouped by
length so short examples are not padded to the longest, and attended with causal SDPA
(padding sits after the real tokens, so causality alone keeps real queries off it). The
outputs are scattered back to the flat order.

A shared prefix (every example of the micro-batch starting with the same loss-free tokens,
e.g. one system prompt) is stored once in the flat row and gathered into every example's
block: the linear layers compute it once, attention sees it in each example exactly as
unshared, and autograd sums the examples' gradients into it. Loss and gradients equal the
unshared computation's.

This is registered with transformers' `AttentionInterface` (its public extension point) under
`NAME`; without a layout the function is plain SDPA, so a model switched to it behaves as
before everywhere else. Works on any device SDPA runs on (CPU, CUDA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tunecraft.data.batching import DocLayout

NAME = "tunecraft_varlen"
LAYOUT_KWARG = "tunecraft_layout"
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    # Left out of torch.compile graphs (train.compile): its per-bucket loop and index tensors
    # would specialize a graph to each micro-batch's layout.
    AttentionInterface.register(NAME, torch.compiler.disable(varlen_attention))
    # Same masks as SDPA for calls without a layout (padded batches, generation).
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def enable(model: Any) -> None:
    """Switch a transformers model to this attention (idempotent; saved configs are unaffected)."""
    _register()
    if getattr(model.config, "_attn_implementation", None) != NAME:
        model.set_attn_implementation(NAME)


def _blocks(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(1, H, T, D) flat states -> (docs, H, L, D) blocks picked by `index` (docs, L)."""
    flat = x[0].transpose(0, 1)  # (T, H, D)
    picked = flat.index_select(0, index.reshape(-1))  # (docs * L, H, D)
    return picked.view(*index.shape, *flat.shape[1:]).transpose(1, 2)


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (1, H, T, D)
    key: torch.Tensor,  # (1, Hkv, T, D)
    value: torch.Tensor,  # (1, Hkv, T, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    layout: DocLayout | None = kwargs.pop(LAYOUT_KWARG, None)
    if layout is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert query.shape[0] == 1, "the varlen layout is one flat row"
    # A local layer (Mistral's, Gemma's sliding window) sees only the last `window` positions.
    window = kwargs.get("sliding_window")
    outs = []
    for index, start in zip(layout.buckets, layout.starts()):
        k, v = _blocks(key, index), _blocks(value, index)
        q = _blocks(query, index[:, start:])
        visible = _visible(q.shape[2], index.shape[1], int(window) if window else None, q.device)
        if _grouped_applies(q, k, dropout):
            o = _grouped_attention(q, k, v, visible, scaling)
        else:
            o = _sdpa(q, k, v, visible, dropout, scaling)
        outs.append(o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[3]))  # (docs * Lq, H, D)
    gathered = outs[0] if len(outs) == 1 else torch.cat(outs)
    out = gathered.index_select(0, layout.out_index)  # (T, H, D) in flat order
    return out.unsqueeze(0).to(query.dtype), None  # (1, T, H, D), as transformers' attention functions return


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None, dropout: float,
          scale: float | None) -> torch.Tensor:
    """One block through SDPA (long blocks, and every block off the CPU)."""
    attend: dict[str, Any] = {"is_causal": True} if visible is None else {"attn_mask": visible}
    # Grouped-query attention (each key/value head serves several query heads) is SDPA's own
    # business: it reads the shared heads in place instead of copying them per query head.
    gqa = q.shape[1] != k.shape[1]
    if _upcast_on(q):  # and out of autocast, which would cast them back down
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), dropout_p=dropout, scale=scale, enable_gqa=gqa, **attend
            )
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale, enable_gqa=gqa, **attend)


# Blocks whose keys are at most this long attend by batched products (`_grouped_attention`)
# on CPU; longer ones by SDPA's flash kernel. Measured fwd + bwd on the default model's heads
# (9 query, 3 key/value), 2-core AMD EPYC: grouped/flash 0.79x (bf16) and 0.70x (fp32) at 64
# keys, 0.88x / 0.82x at 128, 1.33x / 0.99x at 256. It also keeps the scores for the backward
# pass (~6 bytes per query and key), which flash recomputes: bounded here by the key length.
GROUPED_MAX_KEYS = 128


def kept_score_bytes(device_type: str, heads: int, max_len: int, compute_bytes: int) -> int:
    """Bytes per query token and decoder layer that `_grouped_attention` keeps for the backward
    pass beyond what SDPA keeps: the fp32 probabilities over at most GROUPED_MAX_KEYS keys per
    head, and their copy in the compute dtype when that is narrower (0 where SDPA runs)."""
    if device_type != "cpu":
        return 0
    per_score = 4 + (compute_bytes if compute_bytes < 4 else 0)
    return per_score * heads * min(max_len, GROUPED_MAX_KEYS)


def _grouped_applies(q: torch.Tensor, k: torch.Tensor, dropout: float) -> bool:
    """Whether a block attends by `_grouped_attention`: short keys on CPU, no dropout."""
    return (q.device.type == "cpu" and dropout == 0.0 and k.shape[2] <= GROUPED_MAX_KEYS
            and q.shape[1] % k.shape[1] == 0)


def _grouped_attention(
    q: torch.Tensor,  # (docs, H, Lq, D)
    k: torch.Tensor,  # (docs, Hkv, Lk, D)
    v: torch.Tensor,  # (docs, Hkv, Lk, D)
    visible: torch.Tensor | None,  # (Lq, Lk) keys each query sees; None: causal, Lq == Lk
    scale: float | None,
) -> torch.Tensor:
    """Attention of short blocks by two batched products, the query heads that share a key/value
    head stacked into one product (grouped-query attention without copying keys per head).

    CPU SDPA's flash kernel works in tiles sized for long sequences; on examples of tens of
    tokens most of its time is per-tile overhead. Here the scores come from one `baddbmm` per
    block (the mask added as a bias, the scale folded in) and the output from one `bmm`, with
    autograd's backward. Precision: scores and softmax in fp32, as flash computes them; the
    probabilities are rounded to the values' dtype for the second product (bf16 in a bf16 run,
    as flash attention on GPUs does).
    """
    docs, heads, lq, dim = q.shape
    kv_heads, lk = k.shape[1], k.shape[2]
    group = heads // kv_heads
    keep = visible if visible is not None else torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
    # Query head h uses key/value head h // group (transformers' repeat_kv): stacking the heads of
    # a group along the queries repeats the mask `group` times down the rows.
    bias = torch.zeros(lq, lk, device=q.device).masked_fill_(~keep, float("-inf")).repeat(group, 1)
    with torch.autocast(q.device.type, enabled=False):
        # One copy each, straight into the layout the products read (the blocks are strided views).
        stacked = q.to(torch.float32, memory_format=torch.contiguous_format).reshape(docs * kv_heads, group * lq, dim)
        keys_t = k.to(torch.float32, memory_format=torch.contiguous_format).reshape(docs * kv_heads, lk, dim).transpose(1, 2)
        scores = torch.baddbmm(bias, stacked, keys_t, alpha=dim**-0.5 if scale is None else scale)
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.bmm(probs, v.reshape(docs * kv_heads, lk, dim))
    return out.view(docs, heads, lq, dim)


def _visible(queries: int, keys: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """Which keys each query sees, or None for plain causal attention (SDPA's `is_causal`).

    The queries are the last `queries` of the `keys` positions (a bucket that starts after the
    shared prefix): query i sits at key position keys - queries + i and sees keys up to it, and
    within a sliding window (Mistral's, Gemma's local layers) only the last `window` of those
    (transformers' sliding-window mask). An explicit mask for fewer queries than keys still runs
    CPU SDPA's flash kernel: on the default model's shapes (15 examples, a 25-token prefix in
    61) fwd + bwd took 0.57x the time of computing the prefix's queries in every example.
    """
    offset = keys - queries
    if offset == 0 and (window is None or window >= keys):
        return None
    i = torch.arange(queries, device=device).unsqueeze(1) + offset
    j = torch.arange(keys, device=device).unsqueeze(0)
    return (j <= i) & (i - j < window) if window is not None else j <= i


def _upcast_on(query: torch.Tensor) -> bool:
    """Whether to attend in fp32: bf16 (or bf16 autocast) on CPU.

    CPU SDPA's bf16 backward is several times slower than its fp32 one at the lengths examples
    have (16 blocks of 52 tokens, 9 heads: 13.2 ms bf16 vs 2.4 ms fp32 per layer on a 2-core
    Xeon), while attention is a small share of the FLOPs: the cast costs less than it saves,
    and fp32 is the more exact of the two.
    """
    if query.device.type != "cpu":
        return False
    return query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
