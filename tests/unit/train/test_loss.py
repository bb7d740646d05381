"""Our loss equals an independent masked cross-entropy; fast and reference paths agree.

The fast path packs a micro-batch into one flat row with per-document attention and stores a
shared loss-free prefix once; these tests pin that it computes exactly what the plain padded
path computes, and that no example's attention reaches another example.
"""

from __future__ import annotations

import pytest
import torch

from tunecraft.data.batching import live_length, packed_batches, padded_batches, shared_prefix_length
from tunecraft.data.render import IGNORE, TokenizedExample
from tunecraft.models.load import load_model
from tunecraft.train.loop import build
from tunecraft.train.loss import compute_loss, decoder_hidden, densify_grads, sparse_embedding_grad


def _manual_loss(model, examples) -> torch.Tensor:
    """Per example: -log softmax(logits[t])[ids[t+1]] summed over t where labels[t+1] bears loss."""
    total = torch.zeros(())
    for e in examples:
        ids = torch.tensor([e.input_ids])
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(len(e.input_ids) - 1):
            if e.labels[t + 1] != IGNORE:
                total = total - logp[t, e.input_ids[t + 1]]
    return total


@pytest.mark.parametrize("share", [True, False])
def test_reference_and_fast_loss_equal_manual_cross_entropy(make_cfg, share: bool) -> None:
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path)
    examples = plan.train[:6]
    idx = list(range(6))
    with torch.no_grad():
        expected = _manual_loss(model, examples)
        ref = sum(float(compute_loss(model, b, "reference").loss_sum) for b in padded_batches(examples, idx, 3, 0))
        fast = sum(float(compute_loss(model, b, "fast").loss_sum) for b in packed_batches(examples, idx, 3, share))
    assert abs(ref - float(expected)) < 1e-4 * float(expected)
    assert abs(fast - float(expected)) < 1e-4 * float(expected)


def test_packed_equals_padded_loss_and_gradients(make_cfg) -> None:
    plan, _ = build(make_cfg())
    examples, idx = plan.train[:8], list(range(8))
    grads = {}
    for name, batches, engine in (
        ("padded", padded_batches(examples, idx, 4, 0), "reference"),
        ("packed", packed_batches(examples, idx, 4), "fast"),
    ):
        model = load_model(plan.model.path)
        # The fast path's input-embedding gradient is sparse (the batch's rows only), summed
        # into the tied LM head's dense one; the reference's comes from nn.Embedding, dense.
        assert sparse_embedding_grad(model)
        n = sum(b.n_loss for b in batches)
        loss = sum(compute_loss(model, b, engine).loss_sum for b in batches) / n
        loss.backward()
        assert not any(p.grad.is_sparse for p in model.parameters())
        grads[name] = (float(loss), {k: p.grad.clone() for k, p in model.named_parameters()})
    assert abs(grads["padded"][0] - grads["packed"][0]) < 1e-5
    for key, g in grads["padded"][1].items():
        torch.testing.assert_close(grads["packed"][1][key], g, rtol=1e-4, atol=1e-6)


def test_no_sparse_embedding_gradient_for_untied_or_frozen_embeddings(make_cfg) -> None:
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert not sparse_embedding_grad(model)  # LoRA: frozen, no gradient at all
    untied = load_model(plan.model.path)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    # Untied, the embedding's gradient would stay sparse for the optimizer: keep it dense.
    assert not sparse_embedding_grad(untied)


def test_densify_grads_makes_a_lone_sparse_gradient_dense() -> None:
    weight = torch.nn.Parameter(torch.zeros(5, 3))
    torch.nn.functional.embedding(torch.tensor([1, 3, 1]), weight, sparse=True).sum().backward()
    assert weight.grad.is_sparse
    densify_grads([weight])
    assert not weight.grad.is_sparse
    torch.testing.assert_close(weight.grad[:, 0], torch.tensor([0.0, 2.0, 0.0, 1.0, 0.0]))


def test_packed_row_has_no_padding_and_shares_the_system_prompt(make_cfg) -> None:
    plan, _ = build(make_cfg())
    examples = plan.train[:8]
    (batch,) = packed_batches(examples, list(range(8)), 8)
    prefix = shared_prefix_length(examples)
    # The tiny data's chat template adds one system prompt to every example.
    system = plan.tokenizer("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")["input_ids"]
    assert prefix >= len(system)
    assert batch.layout is not None and batch.layout.shared_prefix == prefix
    assert batch.n_tokens == sum(len(e.input_ids) for e in examples)
    live = [live_length(e) for e in examples]
    # Each example's live positions, the shared prefix once instead of 8 times, no padding.
    assert batch.n_computed == sum(live) - 7 * prefix
    assert batch.n_loss == sum(1 for e in examples for t in e.labels[1:] if t != IGNORE)
    (unshared,) = packed_batches(examples, list(range(8)), 8, share_prefix=False)
    assert unshared.n_computed == sum(live)
    assert unshared.n_loss == batch.n_loss


def test_shared_prefix_stops_before_any_loss_bearing_target() -> None:
    a = TokenizedExample(input_ids=list(range(20)), labels=[IGNORE] * 12 + list(range(12, 20)))
    b = TokenizedExample(input_ids=list(range(20)), labels=[IGNORE] * 10 + list(range(10, 20)))
    # b's first loss-bearing label is at index 10: its target position 9 must stay unshared.
    assert shared_prefix_length([a, b]) == 9
    c = TokenizedExample(input_ids=list(range(5)) + [99] * 15, labels=[IGNORE] * 19 + [99])
    assert shared_prefix_length([a, c]) == 0  # 5 common tokens: below the minimum worth sharing
    assert shared_prefix_length([a]) == 0


def test_live_length_keeps_every_position_that_predicts_a_scored_target() -> None:
    # Tokens 0..9; tokens 6, 7 and 8 are scored targets (predicted by positions 5, 6, 7).
    e = TokenizedExample(input_ids=list(range(10)), labels=[IGNORE] * 6 + [6, 7, 8] + [IGNORE])
    assert live_length(e) == 8  # positions 0..7; positions 8 and 9 predict nothing scored
    assert live_length(TokenizedExample(input_ids=[1, 2, 3], labels=[IGNORE] * 3)) == 1
    raw = TokenizedExample(input_ids=[1, 2, 3], labels=[1, 2, 3])
    assert live_length(raw) == 2  # the last position has no target


def _alone(model, e: TokenizedExample) -> torch.Tensor:
    with torch.no_grad():
        return decoder_hidden(model, padded_batches([e], [0], 1, 0)[0])[0]  # (T, H)


def test_each_packed_example_sees_exactly_what_it_sees_alone(make_cfg) -> None:
    """Hidden states of every example in a flat row (several length buckets, shared prefix)
    equal those of the example run alone: no attention crosses examples, none is missing."""
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path).eval()
    long = plan.train[0]
    longer = TokenizedExample(long.input_ids + long.input_ids[5:] * 3, long.labels + long.labels[5:] * 3)
    examples = [plan.train[1], longer, plan.train[2], plan.train[3]]
    (batch,) = packed_batches(examples, [0, 1, 2, 3], 4)
    assert len(batch.layout.buckets) >= 2 and batch.layout.shared_prefix > 0
    with torch.no_grad():
        flat = decoder_hidden(model, batch)[0]  # (T, H)
    prefix = batch.layout.shared_prefix
    at = prefix
    for e in examples:
        live = live_length(e)
        own = live - prefix
        expected = _alone(model, e)
        torch.testing.assert_close(flat[:prefix], expected[:prefix], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(flat[at : at + own], expected[prefix:live], rtol=1e-5, atol=1e-5)
        at += own
    assert at == flat.shape[0]


def test_no_attention_crosses_documents(make_cfg) -> None:
    """Changing one packed example's own tokens leaves its neighbours' hidden states unchanged."""
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path).eval()
    a, b = plan.train[0], plan.train[1]
    (batch,) = packed_batches([a, b], [0, 1], 2)
    prefix = batch.layout.shared_prefix
    end_a = live_length(a)  # a's own tokens are flat positions prefix..end_a-1
    with torch.no_grad():
        out1 = decoder_hidden(model, batch)
        batch.input_ids[0, prefix:end_a] = (batch.input_ids[0, prefix:end_a] + 7) % 300
        out2 = decoder_hidden(model, batch)
    torch.testing.assert_close(out1[0, end_a:], out2[0, end_a:], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out1[0, :prefix], out2[0, :prefix], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out1[0, prefix:end_a], out2[0, prefix:end_a])


@pytest.mark.parametrize("window", [None, 3, 7])
def test_a_shared_prefix_is_attended_once_and_each_document_as_alone(window: int | None) -> None:
    """With a shared prefix, the prefix's queries run in one bucket of their own and the
    examples' buckets compute only their own queries over keys that include the prefix (sliding
    window or not); outputs and gradients equal attending each example's whole span alone."""
    from tunecraft.data.batching import doc_layout
    from tunecraft.train.attention import varlen_attention

    torch.manual_seed(0)
    prefix, own = 4, [3, 6, 2, 5]  # a 4-token prefix, then four examples' own tokens
    spans, at = [], prefix
    for n in own:
        spans.append(list(range(prefix)) + list(range(at, at + n)))
        at += n
    layout = doc_layout(spans, at, prefix)
    assert layout.starts()[0] == 0 and layout.buckets[0].tolist() == [list(range(prefix))]
    assert set(layout.starts()[1:]) == {prefix}  # no example's bucket computes prefix queries
    rows = prefix + sum(len(b) * (b.shape[1] - prefix) for b in layout.buckets[1:])
    assert sorted(layout.out_index.tolist()) == sorted(set(layout.out_index.tolist())) and rows > max(layout.out_index)
    q, k, v = (torch.randn(1, h, at, 8, requires_grad=True) for h in (4, 2, 2))
    out, _ = varlen_attention(None, q, k, v, None, tunecraft_layout=layout, sliding_window=window)
    out.pow(2).sum().backward()
    got = [out.detach()[0]] + [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    want = torch.zeros_like(got[0])
    for i, span in enumerate(spans):  # each example alone over its whole span
        idx = torch.tensor(span)
        n = len(span)
        keep = torch.ones(n, n, dtype=torch.bool).tril()
        if window is not None:
            keep &= ~torch.ones(n, n, dtype=torch.bool).tril(-window)
        o = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, idx], k[:, :, idx], v[:, :, idx], attn_mask=keep, enable_gqa=True)[0].transpose(0, 1)
        mine = slice(0, n) if i == 0 else slice(prefix, n)  # the prefix's output is the first's
        want[idx[mine]] = o[mine].detach()
        o[mine].pow(2).sum().backward()
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    for g, x in zip(got[1:], (q, k, v)):
        torch.testing.assert_close(g, x.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_attention_of_long_blocks_on_cpu_is_computed_in_fp32(autocast: bool) -> None:
    """bf16 states (or bf16 autocast) on CPU attend in fp32 when a block's keys are longer than
    the batched products' limit: the output and the gradients are SDPA's fp32 computation's,
    rounded to bf16 once (CPU's bf16 attention backward is much slower)."""
    from tunecraft.data.batching import DocLayout
    from tunecraft.train.attention import GROUPED_MAX_KEYS, varlen_attention

    torch.manual_seed(0)
    L = GROUPED_MAX_KEYS + 2
    T = 2 * L  # two documents, one bucket
    layout = DocLayout([torch.arange(T).view(2, L)], torch.arange(T), 0)
    source = [torch.randn(1, h, T, 8) for h in (4, 2, 2)]  # query heads 4, key/value heads 2

    def run(fp32: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        q, k, v = (x.to(torch.bfloat16).requires_grad_(True) for x in source)
        if fp32:
            blocks = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
            o = torch.nn.functional.scaled_dot_product_attention(
                *(b[0].transpose(0, 1).reshape(2, L, -1, 8).transpose(1, 2) for b in blocks),
                is_causal=True, enable_gqa=True)
            out = o.transpose(1, 2).reshape(T, 4, 8).unsqueeze(0).to(torch.bfloat16)
            out.float().pow(2).sum().backward()
            return out, [b.grad.to(torch.bfloat16) for b in blocks]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = varlen_attention(None, q, k, v, None, tunecraft_layout=layout)
        assert out.dtype == torch.bfloat16
        out.float().pow(2).sum().backward()
        return out, [x.grad for x in (q, k, v)]

    out, grads = run(fp32=False)
    want, want_grads = run(fp32=True)
    assert torch.equal(out, want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_attention_of_short_blocks_keeps_fp32_scores(autocast: bool) -> None:
    """Short blocks attend by batched products with fp32 scores and softmax: on bf16 states the
    output and gradients are within twice the error of SDPA computing in fp32 and rounding once
    (both against an fp64 reference); scores rounded to bf16 would be several times further."""
    from tunecraft.data.batching import DocLayout
    from tunecraft.train.attention import varlen_attention

    torch.manual_seed(0)
    docs, L, dim = 4, 40, 16
    T = docs * L
    layout = DocLayout([torch.arange(T).view(docs, L)], torch.arange(T), 0)
    source = [3 * torch.randn(1, h, T, dim) for h in (6, 2, 2)]  # large scores: rounding shows
    grad_out = torch.randn(1, T, 6, dim, dtype=torch.float64)

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return x[0].transpose(0, 1).reshape(docs, L, -1, dim).transpose(1, 2)

    def sdpa(dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        xs = [x.to(torch.bfloat16).to(dtype).requires_grad_(True) for x in source]
        o = torch.nn.functional.scaled_dot_product_attention(*map(blocks, xs), is_causal=True, enable_gqa=True)
        out = o.transpose(1, 2).reshape(T, 6, dim).unsqueeze(0)
        if dtype == torch.float32:  # the fp32 computation, rounded to bf16 once
            out = out.to(torch.bfloat16)
        out.double().mul(grad_out).sum().backward()
        return out.double(), [x.grad.to(torch.bfloat16).double() if dtype == torch.float32 else x.grad for x in xs]

    q, k, v = (x.to(torch.bfloat16).requires_grad_(True) for x in source)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, _ = varlen_attention(None, q, k, v, None, tunecraft_layout=layout)
    assert out.dtype == torch.bfloat16
    out.double().mul(grad_out).sum().backward()
    got = [out.double()] + [x.grad.double() for x in (q, k, v)]
    exact_out, exact_grads = sdpa(torch.float64)
    rounded_out, rounded_grads = sdpa(torch.float32)
    for g, r, e in zip(got, [rounded_out, *rounded_grads], [exact_out, *exact_grads]):
        assert (g - e).norm() <= 2 * (r - e).norm()


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_evaluation_sums_each_example_apart(make_cfg, engine: str) -> None:
    """Evaluation's per-example sums (the interval's clusters) are each example's loss alone,
    packed with a shared prefix or padded, and add up to the micro-batch's loss."""
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path).eval()
    examples, idx = plan.train[:5], list(range(5))

    def batches(group, ids):
        return packed_batches(group, ids, len(ids)) if engine == "fast" else padded_batches(group, ids, len(ids), 0)

    with torch.no_grad():
        (batch,) = batches(examples, idx)
        out = compute_loss(model, batch, engine, with_accuracy=True)
        alone = [compute_loss(model, batches([e], [0])[0], engine, with_accuracy=True) for e in examples]
    assert engine != "fast" or batch.layout.shared_prefix > 0  # the prefix is stored once
    torch.testing.assert_close(out.example_sums, torch.stack([a.loss_sum for a in alone]), rtol=1e-4, atol=1e-4)
    assert out.example_tokens.tolist() == [b.n_loss for e in examples for b in batches([e], [0])]
    torch.testing.assert_close(out.example_sums.sum(), out.loss_sum, rtol=1e-5, atol=1e-5)
    assert int(out.n_correct) == sum(int(a.n_correct) for a in alone)


def test_a_full_pass_merged_from_the_subsample_and_the_rest_equals_one_pass(make_cfg) -> None:
    """The run's last evaluation is not repeated for the full pass: the examples it left out are
    evaluated and merged with it, which must give what one pass over every example gives."""
    from tunecraft.train.loop import build_model, evaluate, merge_results

    plan, rt = build(make_cfg(**{"data.val_fraction": 0.25}))
    model, _ = build_model(plan, rt)
    sub = (0, 3, 5, 9)
    rest = tuple(i for i in range(len(plan.val)) if i not in sub)
    merged = merge_results(evaluate(model, plan, rt, sub), evaluate(model, plan, rt, rest))
    whole = evaluate(model, plan, rt)
    assert merged.examples == whole.examples == len(plan.val)
    assert merged.count == whole.count and merged.correct == whole.correct
    assert merged.loss == pytest.approx(whole.loss, rel=1e-5)
    assert merged.accuracy == pytest.approx(whole.accuracy)
    assert merged.ci95 is not None and merged.ci95 == pytest.approx(whole.ci95, rel=1e-3)
