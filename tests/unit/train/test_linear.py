"""oneDNN forward products (`train.linear`) compute what `nn.Linear` computes, forward and back."""

from __future__ import annotations

import pytest
import torch

from tunecraft.data.batching import packed_batches
from tunecraft.models.load import load_model
from tunecraft.train import linear
from tunecraft.train.linear import FastLinear, use_fast_linears
from tunecraft.train.loop import build
from tunecraft.train.loss import compute_loss


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24), (1, 0, 24)])
def test_fast_linear_equals_nn_linear_forward_and_backward(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=bias)
    copy = torch.nn.Linear(24, 40, bias=bias)
    copy.load_state_dict(plain.state_dict())
    holder = torch.nn.Sequential(copy)
    assert use_fast_linears(holder) == 1
    fast = holder[0]
    assert type(fast) is FastLinear and fast.weight is copy.weight and fast.bias is copy.bias
    x = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = plain(xa), fast(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_input_still_does() -> None:
    holder = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
    holder[0].weight.requires_grad_(False)
    use_fast_linears(holder)
    layer = holder[0]
    assert type(layer) is FastLinear
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, 8))


def test_bf16_and_autocast_take_the_plain_path() -> None:
    w = torch.randn(4, 8)
    assert linear._applies(torch.randn(2, 8), w)
    assert not linear._applies(torch.randn(2, 8, dtype=torch.bfloat16), w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear._applies(torch.randn(2, 8), w)
        out = linear.linear(torch.randn(2, 8), w, None, onednn=True)
    assert out.dtype == torch.bfloat16  # autocast's own bf16 linear


def test_conversion_keeps_parameters_names_and_state_dict(make_cfg) -> None:
    plan, _ = build(make_cfg())
    model = load_model(plan.model.path)
    before = {k: v for k, v in model.named_parameters()}
    keys = list(model.state_dict())
    originals = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert use_fast_linears(model) == len(originals) > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert all(type(m) is torch.nn.Linear for m in originals)  # swapped out, never re-classed
    assert list(model.state_dict()) == keys
    assert all(before[k] is v for k, v in model.named_parameters())  # the same objects


def test_fast_loss_and_gradients_equal_with_onednn_linears(make_cfg) -> None:
    """The whole fast path (packed rows, shared prefix, LM head in chunks) with oneDNN forward
    products gives the loss and every gradient of the same path with plain linears."""
    plan, _ = build(make_cfg())
    examples, idx = plan.train[:8], list(range(8))
    results = []
    for fast_linears in (False, True):
        model = load_model(plan.model.path)
        if fast_linears:
            use_fast_linears(model)
        batches = packed_batches(examples, idx, 4)
        n = sum(b.n_loss for b in batches)
        loss = sum(compute_loss(model, b, "fast").loss_sum for b in batches) / n
        loss.backward()
        results.append((float(loss), {k: p.grad.clone() for k, p in model.named_parameters()}))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    for key, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][key], g, rtol=1e-4, atol=1e-6)


def test_probe_reports_its_measurement() -> None:
    result = linear.probe(64, 128)
    assert isinstance(result.onednn, bool)
    assert "x" in result.reason  # the measured ratio, whichever way it went


def test_lora_adapters_train_the_same_through_onednn_linears(make_cfg) -> None:
    from tunecraft.train.lora import apply_lora

    plan, _ = build(make_cfg(**{"train.method": "lora"}))
    examples, idx = plan.train[:6], list(range(6))
    grads = []
    for fast_linears in (False, True):
        model = apply_lora(load_model(plan.model.path), plan.settings.lora, 0)
        if fast_linears:
            assert use_fast_linears(model) > 0  # base layers, adapters and the LM head
        (batch,) = packed_batches(examples, idx, 6)
        compute_loss(model, batch, "fast").loss_sum.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, rtol=1e-4, atol=1e-6)
