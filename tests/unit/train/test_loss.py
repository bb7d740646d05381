"""Our loss equals an independent masked cross-entropy; fast and reference paths agree."""

from __future__ import annotations

import torch

from tunecraft.data.batching import packed_batches, padded_batches
from tunecraft.data.render import IGNORE
from tunecraft.train.loop import build
from tunecraft.train.loss import compute_loss
from tunecraft.models.load import load_model


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


def test_reference_and_fast_loss_equal_manual_cross_entropy(make_cfg) -> None:
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path)
    examples = plan.train[:6]
    idx = list(range(6))
    expected = _manual_loss(model, examples)
    with torch.no_grad():
        ref = sum(float(compute_loss(model, b, "reference").loss_sum) for b in padded_batches(examples, idx, 3, 0))
        fast = sum(
            float(compute_loss(model, b, "fast").loss_sum) for b in packed_batches(examples, idx, 128, 2, 0)
        )
    assert abs(ref - float(expected)) < 1e-3 * float(expected)
    assert abs(fast - float(expected)) < 1e-3 * float(expected)


def test_packed_equals_padded_loss_and_gradients(make_cfg) -> None:
    plan, _ = build(make_cfg())
    examples, idx = plan.train[:8], list(range(8))
    grads = {}
    for name, batches, engine in (
        ("padded", padded_batches(examples, idx, 4, 0), "reference"),
        ("packed", packed_batches(examples, idx, 256, 2, 0), "fast"),
    ):
        model = load_model(plan.model.path)
        n = sum(b.n_loss for b in batches)
        loss = sum(compute_loss(model, b, engine).loss_sum for b in batches) / n
        loss.backward()
        grads[name] = (float(loss), {k: p.grad.clone() for k, p in model.named_parameters()})
    assert abs(grads["padded"][0] - grads["packed"][0]) < 1e-5
    for key, g in grads["padded"][1].items():
        torch.testing.assert_close(grads["packed"][1][key], g, rtol=1e-4, atol=1e-6)


def test_no_attention_crosses_documents(make_cfg) -> None:
    """Changing one packed example's tokens leaves its row-neighbour's logits unchanged."""
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path).eval()
    a, b = plan.train[0], plan.train[1]
    (batch,) = packed_batches([a, b], [0, 1], 512, 1, 0)
    assert batch.input_ids.shape[0] == 1  # both in one row
    first_len = len(a.input_ids) if batch.input_ids[0, : len(a.input_ids)].tolist() == a.input_ids else len(b.input_ids)
    with torch.no_grad():
        out1 = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        changed = batch.input_ids.clone()
        changed[0, 1:first_len] = (changed[0, 1:first_len] + 7) % 300
        out2 = model(input_ids=changed, position_ids=batch.position_ids, use_cache=False).logits
    torch.testing.assert_close(out1[0, first_len:], out2[0, first_len:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out1[0, 1:first_len], out2[0, 1:first_len])
