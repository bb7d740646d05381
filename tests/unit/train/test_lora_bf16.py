"""A bf16 LoRA run's adapter products in bf16 over fp32 adapters: the products really run in
bf16, the gradients reach the fp32 adapters in fp32, and loss and gradients match peft's own fp32
adapter products to bf16 rounding. Plain LoRA gets there through `FusedLoraLinear` (no autocast);
with dropout, peft's layer runs under autocast (`train.lora.bf16_adapters`)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunecraft.train import loop
from tunecraft.train.loop import step_batches
from tunecraft.train.lora import bf16_adapters
from tunecraft.train.lora_linear import FusedLoraLinear

# A dropout module that the eval mode switches off: peft's own layer, computing what plain LoRA does.
PEFTS_OWN = {"lora.dropout": 1e-6}


def _loss_and_grads(model: Any, plan: Any, rt: Any, bf16: bool
                    ) -> tuple[float, dict[str, torch.Tensor], set[torch.dtype]]:
    """One micro-batch's loss and the adapters' gradients; the dtypes the adapter products ran in."""
    dtypes: set[torch.dtype] = set()
    fused = [m for m in model.modules() if isinstance(m, FusedLoraLinear)]
    watched = fused or [m for name, m in model.named_modules() if name.endswith("lora_A.default")]
    hooks = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype)) for m in watched]
    model.zero_grad(set_to_none=True)
    batch = step_batches(plan, list(range(8)), rt)[0]
    context = loop._autocast(rt, plan.settings, model) if bf16 else torch.autocast("cpu", enabled=False)
    with context:
        out = rt.dist.loss(model, batch.to(rt.device), plan.settings.engine)
        out.loss_sum.backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(out.loss_sum.detach()), grads, dtypes


def _assert_close(bf16: tuple[float, dict[str, torch.Tensor], set[torch.dtype]],
                  fp32: tuple[float, dict[str, torch.Tensor], set[torch.dtype]]) -> None:
    bf16_loss, bf16_grads, bf16_dtypes = bf16
    fp32_loss, fp32_grads, fp32_dtypes = fp32
    assert fp32_dtypes == {torch.float32}  # peft casts the bf16 input up to its fp32 adapters
    assert bf16_dtypes == {torch.bfloat16}
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-2)
    assert bf16_grads.keys() == fp32_grads.keys() and bf16_grads
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.float32, name  # the master adapters get fp32 gradients
    flat = lambda gs: torch.cat([g.flatten() for g in gs.values()])  # noqa: E731
    a, b = flat(bf16_grads), flat(fp32_grads)
    assert torch.linalg.vector_norm(a - b) <= 0.05 * torch.linalg.vector_norm(b)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.998


def test_fused_adapter_products_run_in_bf16_and_match_pefts_fp32_ones(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"train.precision": "bf16"})
    _, _, reference = make_lora_model(**{"train.precision": "bf16", **PEFTS_OWN})
    assert not any(isinstance(m, FusedLoraLinear) for m in reference.modules())
    reference.load_state_dict(model.state_dict())
    model.eval(), reference.eval()  # the reference's dropout off
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    _assert_close(_loss_and_grads(model, plan, rt, bf16=True), _loss_and_grads(reference, plan, rt, bf16=False))


def test_pefts_layer_under_autocast_runs_in_bf16_and_matches_fp32(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"train.precision": "bf16", **PEFTS_OWN})
    model.eval()
    fp32 = _loss_and_grads(model, plan, rt, bf16=False)
    _assert_close(_loss_and_grads(model, plan, rt, bf16=True), fp32)
    # peft's own setting is back after the block
    assert all(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))


def test_the_loop_autocasts_only_where_peft_multiplies(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"train.precision": "bf16"})
    assert any(isinstance(m, FusedLoraLinear) for m in model.modules())
    with loop._autocast(rt, plan.settings, model):
        assert not torch.is_autocast_enabled("cpu")  # the fused layers multiply in bf16 themselves
    plan, rt, model = make_lora_model(**{"train.precision": "bf16", "lora.dropout": 0.1})
    assert not any(isinstance(m, FusedLoraLinear) for m in model.modules())
    with loop._autocast(rt, plan.settings, model):
        assert torch.is_autocast_enabled("cpu")
        assert not any(m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    plan, rt, model = make_lora_model()
    with loop._autocast(rt, plan.settings, model):
        assert not torch.is_autocast_enabled("cpu")  # fp32 adapters over an fp32 base: nothing to cast


def test_dora_keeps_pefts_own_casts(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"train.precision": "bf16", "lora.use_dora": True})
    assert not any(isinstance(m, FusedLoraLinear) for m in model.modules())
    with bf16_adapters(model, "cpu", plan.settings.lora) as used:
        assert not used and not torch.is_autocast_enabled("cpu")
