"""FusedLoraLinear (train.lora_linear): peft's LoRA layer with a one-function training product.
It must compute what peft's layer computes (output and every gradient), keep its parameters and
state dict, and leave every case it does not cover to peft's own forward, unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as PeftLoraLinear

from tunecraft.config import LoraConfig as TunecraftLora
from tunecraft.train.lora_linear import FusedLoraLinear, applies


def _pair(bias: bool = True, alpha: float = 8.0, dropout: float = 0.0, rank: int = 4,
          dtype: torch.dtype = torch.float32) -> tuple[PeftLoraLinear, FusedLoraLinear]:
    """peft's layer and the fused one over equal weights (B non-zero, the base frozen)."""
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 10, bias=bias).to(dtype).requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout)
    kwargs = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout}
    peft_layer = PeftLoraLinear(copy.deepcopy(base), "default", config=cfg, **kwargs)
    fused = FusedLoraLinear(copy.deepcopy(base), "default", config=cfg, **kwargs)
    peft_layer.lora_A.float(), peft_layer.lora_B.float()  # fp32 adapters, as get_peft_model keeps them
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_(0, 0.5)
    fused.lora_A.float(), fused.lora_B.float()
    fused.load_state_dict(peft_layer.state_dict())
    return peft_layer, fused


def _run(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("alpha", [8.0, 3.0])  # scale 2 and a scale that is not a power of two
def test_output_and_gradients_equal_pefts_in_fp32(bias: bool, alpha: float) -> None:
    peft_layer, fused = _pair(bias=bias, alpha=alpha)
    x = torch.randn(2, 7, 12)
    y0, dx0, g0 = _run(peft_layer, x)
    y1, dx1, g1 = _run(fused, x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    assert len(g1) == len(g0) == 2  # A and B only: the base stays frozen
    for a, b in zip(g1, g0):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused.get_base_layer().weight.grad is None


def test_bf16_base_multiplies_in_bf16_with_fp32_adapter_gradients() -> None:
    peft_layer, fused = _pair(dtype=torch.bfloat16)
    x = torch.randn(3, 5, 12, dtype=torch.bfloat16)
    y_ref, dx_ref, g_ref = _run(peft_layer, x)  # peft: fp32 adapters over the bf16 input cast up
    y, dx, g = _run(fused, x)
    assert y.dtype == dx.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in g)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(dx.float(), dx_ref.float(), rtol=3e-2, atol=3e-2)
    for a, b in zip(g, g_ref):
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


def test_cases_it_does_not_cover_take_pefts_forward_unchanged() -> None:
    x = torch.randn(2, 4, 12)
    peft_layer, fused = _pair()
    peft_layer.enable_adapters(False), fused.enable_adapters(False)  # adapters switched off
    assert torch.equal(fused(x), peft_layer(x))
    peft_layer, fused = _pair()
    peft_layer.merge(), fused.merge()  # merged weights
    assert torch.equal(fused(x), peft_layer(x))
    peft_layer, fused = _pair(dropout=0.5)  # dropout: peft's own random masks
    torch.manual_seed(1)
    expected = peft_layer(x)
    torch.manual_seed(1)
    assert torch.equal(fused(x), expected)
    peft_layer, fused = _pair()
    fused.get_base_layer().weight.requires_grad_(True)  # a base that trains: peft's product
    peft_layer.get_base_layer().weight.requires_grad_(True)
    assert torch.equal(fused(x), peft_layer(x))


def test_the_state_dict_is_pefts() -> None:
    peft_layer, fused = _pair()
    assert list(fused.state_dict()) == list(peft_layer.state_dict())


def test_which_settings_fuse() -> None:
    assert applies(TunecraftLora())
    assert not applies(TunecraftLora(dropout=0.05))
    assert not applies(TunecraftLora(use_dora=True))
    assert not applies(TunecraftLora(quantize="nf4"))
