"""Linear layers' forward product through oneDNN on CPUs where it beats torch's default BLAS.

On CPU, torch runs an fp32 `F.linear` through MKL's sgemm, which does not take its best code
path on AMD CPUs. oneDNN (also bundled with torch) computes the same product faster there:
on the 2-core AMD EPYC, about 1.1x on the decoder's shapes (interleaved with MKL calls, as in
a step) and 1.8x on the LM head's, for 3-4% of a training step (README, Performance). The
backward products stay with torch's matmul, which was not slower there.

Nothing here is global: `use_fast_linears(model)` replaces the model's `nn.Linear` modules
with `FastLinear` modules over the same parameters (state dicts, peft and saving are
unchanged), and `probe()` times both backends on this machine once per process and picks
oneDNN only when it is faster. Anything else (CUDA, bf16, autocast, no oneDNN) is plain
`F.linear`.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# oneDNN's linear on dense tensors (the op torch's own CPU inductor lowers linears to).
_ONEDNN = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
MIN_GAIN = 1.03  # oneDNN must be at least this much faster in the probe (interleaved, noisy)


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    assert _ONEDNN is not None
    return _ONEDNN(x, weight, bias, "none", [None], "")  # no fused post-op


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with the forward product in oneDNN; the backward is the usual matmuls."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad2d = grad.reshape(-1, grad.shape[-1])
        dx = grad @ weight if ctx.needs_input_grad[0] else None
        dw = grad2d.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        db = grad2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool) -> torch.Tensor:
    """`F.linear(x, weight, bias)`; its forward product in oneDNN when `onednn` and fp32 on CPU."""
    if onednn and _applies(x, weight) and (bias is None or bias.dtype == torch.float32):
        return _OneDnnLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(torch.nn.Linear):
    """An `nn.Linear` whose fp32 CPU forward product runs in oneDNN (same parameters)."""

    @classmethod
    def sharing(cls, plain: torch.nn.Linear) -> FastLinear:
        """A FastLinear over `plain`'s own weight and bias (no copy, no new allocation)."""
        with torch.device("meta"):  # the placeholders made by __init__ are dropped below
            fast = cls(plain.in_features, plain.out_features, bias=plain.bias is not None)
        fast.weight = plain.weight
        fast.bias = plain.bias
        fast.train(plain.training)
        return fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, onednn=True)


@dataclass(frozen=True)
class Probe:
    onednn: bool  # use oneDNN for the forward products
    reason: str
    seconds: float = 0.0  # what the probe took (reported with the start-up)


def _paired_ratio(default: Any, onednn: Any, reps: int = 15) -> float:
    """Median over interleaved pairs of default-time / oneDNN-time (robust to a busy machine)."""
    default(), onednn()  # first calls: one-time setup (kernel selection, allocation)
    ratios = []
    for _ in range(reps):
        t0 = time.perf_counter()
        default()
        t1 = time.perf_counter()
        onednn()
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / max(t2 - t1, 1e-9))
    return statistics.median(ratios)


@functools.cache
def probe(hidden: int, intermediate: int) -> Probe:
    """Time torch's default fp32 linear against oneDNN's on a decoder-like shape (~0.2 s, once)."""
    if _ONEDNN is None or not torch.backends.mkldnn.is_available():
        return Probe(False, "oneDNN is not available in this torch build")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(384, hidden, generator=gen)
    w = torch.randn(intermediate, hidden, generator=gen)
    ratio = _paired_ratio(lambda: F.linear(x, w), lambda: _onednn_linear(x, w, None))
    took = round(time.perf_counter() - t0, 3)
    if ratio >= MIN_GAIN:
        return Probe(True, f"oneDNN forward products ({ratio:.2f}x the default BLAS on this CPU)", took)
    return Probe(False, f"default BLAS (oneDNN measured {ratio:.2f}x, below {MIN_GAIN}x)", took)


def use_fast_linears(model: torch.nn.Module) -> int:
    """Replace every plain `nn.Linear` in `model` with a `FastLinear`; returns how many.

    Each replacement is a new module holding the *same* parameter objects, set on its parent
    by name (`setattr`), so optimizers, tied weights, peft's adapters and state dicts see the
    same tensors under the same names. No instance changes class.
    """
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, FastLinear.sharing(child))
    return len(swaps)
