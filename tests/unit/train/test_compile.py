"""train.compile: compiled decoder layers compute the same step as eager ones."""

from __future__ import annotations

import pytest
import torch

from tunecraft.train.loop import build, build_model, micro_batches, train_step
from tunecraft.train.optim import build_optimizer


def _one_step(make_cfg, compiled: bool) -> tuple[float, dict[str, torch.Tensor]]:
    plan, rt = build(make_cfg(**{"train.compile": compiled, "train.micro_batch_size": 4}))
    torch.manual_seed(0)
    model, _ = build_model(plan, rt)
    opt = build_optimizer((p for p in model.parameters() if p.requires_grad), 1e-3, 0.0, False)
    losses = [train_step(model, opt, micro_batches(plan, list(range(i, i + 8)), plan.train), plan.settings, rt)[0]
              for i in (0, 8)]  # two steps: different flat lengths reuse the dynamic graph
    return sum(losses), {k: p.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.slow
def test_compiled_layers_train_like_eager_layers(make_cfg) -> None:
    eager_loss, eager = _one_step(make_cfg, False)
    compiled_loss, compiled = _one_step(make_cfg, True)
    assert abs(eager_loss - compiled_loss) < 1e-4 * abs(eager_loss)
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5)


def test_compile_is_off_unless_asked(make_cfg) -> None:
    plan, _ = build(make_cfg())
    assert plan.settings.compile is False and plan.config.train.compile is False
    assert any(c.field == "train.compile" for c in plan.choices)
