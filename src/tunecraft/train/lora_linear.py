"""A LoRA linear layer whose training product is one autograd function.

peft's LoRA layer computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as five modules'
worth of operations, each its own autograd node, and in a bf16 run it needs autocast around the
whole model to multiply its fp32 adapters in bf16 (casts recorded per layer, and autocast's
dispatch on every operation of the step). Where matrix products are cheap (AMX), that overhead is
a large share of a step. `FusedLoraLinear` is peft's own `lora.Linear` (same parameters, state
dict, merge, save and adapter switching) whose forward, for plain LoRA while the adapter is on,
is one function:

    y = x W^T (+ b) + s (x A^T) B^T        in the base weight's dtype, A and B cast to it once

with a hand-written backward (the base weight frozen): dx = g W + s (g B) A, dA = s (g B)^T x,
dB = s g^T (x A^T), the adapters' gradients in their own fp32. With every LoRA layer fused, a bf16
LoRA run needs no autocast at all (`lora.bf16_adapters`). Measured on the default model, 2-core
Xeon with AMX, rank 64 on every linear layer, bench data, interleaved steps in one process:
0.935x the step time of peft's layer under autocast (docs/performance.md).

Anything else (dropout above 0, DoRA, a quantized or trainable base, a base other than a plain
`nn.Linear` such as fp32 runs' oneDNN `FastLinear`, several adapters, adapter names per row,
merged weights, adapters switched off) takes peft's own forward unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear as PeftLoraLinear

from tunecraft.config import LoraConfig


class _LoraProduct(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T; gradients for x, A and B (W and b are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
        dtype = weight.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        h = x2 @ a.t()  # (tokens, r)
        base = torch.nn.functional.linear(x2, weight, bias)
        y = torch.addmm(base, h, b.t(), alpha=scale)  # the adapter's product added at full precision
        ctx.save_for_backward(x2, weight, a, b, h)
        ctx.scale, ctx.x_shape, ctx.x_dtype = scale, x.shape, x.dtype
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight, a, b, h = ctx.saved_tensors
        scale = ctx.scale
        g = grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        gh = g @ b  # (tokens, r): the gradient reaching the adapter's inner product, unscaled
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.addmm(g @ weight, gh, a, alpha=scale).view(ctx.x_shape).to(ctx.x_dtype)
        da = (gh.t() @ x2).to(ctx.param_dtypes[0]).mul_(scale) if ctx.needs_input_grad[3] else None
        db = (g.t() @ h).to(ctx.param_dtypes[1]).mul_(scale) if ctx.needs_input_grad[4] else None
        return dx, None, None, da, db, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer with the fused training product (see the module docstring)."""

    def _fused_adapter(self, kwargs: dict[str, Any]) -> str | None:
        """The one active adapter the fused product can compute, else None (peft's forward)."""
        if self.disable_adapters or self.merged or kwargs or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or self.fan_in_fan_out:
            return None
        if not isinstance(self.lora_dropout[name], torch.nn.Identity):  # dropout above 0
            return None
        if getattr(self.lora_B[name], "bias", None) is not None:  # peft's lora_bias
            return None
        base = self.get_base_layer()
        if type(base) is not torch.nn.Linear or not base.weight.is_floating_point() or base.weight.requires_grad:
            return None
        return name

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = None if args else self._fused_adapter(kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        return _LoraProduct.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                  self.lora_B[name].weight, float(self.scaling[name]))


def applies(cfg: LoraConfig) -> bool:
    """Whether the linear layers `apply_lora` makes with these settings are `FusedLoraLinear`s
    that compute their own product (so a bf16 run needs no autocast)."""
    return cfg.dropout == 0 and not cfg.use_dora and cfg.quantize == "none"
