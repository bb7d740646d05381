"""Gradient checkpointing: the same loss and gradients, fewer activations kept; decided from the
plan's memory estimate."""

from __future__ import annotations

import pytest
import torch

from tunecraft.train import memory
from tunecraft.train.loop import build, build_model, micro_batches, train_step
from tunecraft.train.plan import make_plan


def _step(make_cfg, checkpointing: bool, engine: str, method: str):
    plan, rt = build(make_cfg(**{"train.gradient_checkpointing": checkpointing, "train.engine": engine,
                                 "train.method": method, "lora.r": 4}))
    model, _ = build_model(plan, rt)
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in trainable.items()}
    opt = torch.optim.SGD(trainable.values(), lr=1.0)  # the update is the (clipped) gradient itself
    loss, norm = train_step(model, opt, micro_batches(plan, list(range(8)), plan.train), plan.settings, rt)
    return loss, norm, {k: before[k] - p.detach() for k, p in trainable.items()}, model, plan, rt


def _saved_bytes(model, plan, rt) -> int:
    """Bytes the forward pass keeps for backward (every tensor autograd saves, counted once)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch = micro_batches(plan, list(range(8)), plan.train)[0]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = rt.dist.loss(model, batch.to(rt.device), plan.settings.engine)
    del out
    return sum(seen.values())


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(make_cfg, engine: str, method: str) -> None:
    loss0, norm0, grads0, *_ = _step(make_cfg, False, engine, method)
    loss1, norm1, grads1, model, plan, rt = _step(make_cfg, True, engine, method)
    assert plan.settings.gradient_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert loss1 == pytest.approx(loss0, rel=1e-6) and norm1 == pytest.approx(norm0, rel=1e-5)
    assert grads0.keys() == grads1.keys() and grads0
    for key, g in grads0.items():
        torch.testing.assert_close(grads1[key], g, rtol=1e-5, atol=1e-7)


def test_checkpointing_keeps_fewer_activations(make_cfg) -> None:
    *_, plain_model, plain_plan, rt = _step(make_cfg, False, "fast", "full")
    *_, ckpt_model, ckpt_plan, _ = _step(make_cfg, True, "fast", "full")
    plain, kept = _saved_bytes(plain_model, plain_plan, rt), _saved_bytes(ckpt_model, ckpt_plan, rt)
    assert kept < 0.6 * plain, (kept, plain)


def test_the_estimate_adds_up_and_checkpointing_shrinks_activations() -> None:
    dims = {"hidden": 576, "intermediate": 1536, "layers": 30, "vocab": 49152}
    full = memory.estimate(135_000_000, 135_000_000, "full", 2, 4096, dims, checkpointing=False)
    assert full.weights == 135_000_000 * 4 and full.optimizer == 2 * full.gradients == 135_000_000 * 8
    assert full.activations == 4096 * (12 * 576 + 4 * 1536) * 2 * 30
    ckpt = memory.estimate(135_000_000, 135_000_000, "full", 2, 4096, dims, checkpointing=True)
    assert ckpt.activations < full.activations / 10 and ckpt.total == ckpt.to_json()["total"]
    lora = memory.estimate(135_000_000, 5_000_000, "lora", 2, 4096, dims, checkpointing=False)
    assert lora.weights == 135_000_000 * 2 + 5_000_000 * 4 and lora.gradients == 5_000_000 * 4
    scored = memory.estimate(135_000_000, 135_000_000, "full", 2, 4096, dims, checkpointing=False, score_bytes=100)
    assert scored.activations == full.activations + 4096 * 100 * 30


def test_short_attention_blocks_kept_probabilities_are_counted_on_cpu_only() -> None:
    """CPU's batched short-block attention keeps fp32 probabilities (and their bf16 copy in a bf16
    run) over at most GROUPED_MAX_KEYS keys per head; SDPA elsewhere keeps none of them."""
    from tunecraft.train.attention import GROUPED_MAX_KEYS, kept_score_bytes

    assert kept_score_bytes("cpu", 9, 2048, 2) == (4 + 2) * 9 * GROUPED_MAX_KEYS
    assert kept_score_bytes("cpu", 9, 2048, 4) == 4 * 9 * GROUPED_MAX_KEYS  # fp32: one tensor
    assert kept_score_bytes("cpu", 9, 64, 2) == 6 * 9 * 64  # no example is longer than max_len
    assert kept_score_bytes("cuda", 9, 2048, 2) == 0


def test_the_plans_estimate_counts_the_kept_probabilities(make_cfg) -> None:
    from tunecraft.train.attention import kept_score_bytes

    plan = make_plan(make_cfg(**{"train.gradient_checkpointing": False}))
    dims, s = memory.shape(plan.model.path), plan.settings
    compute = 2 if s.precision == "bf16" else 4
    per_layer = (12 * dims["hidden"] + 4 * dims["intermediate"]) * compute
    scores = kept_score_bytes("cpu", dims["heads"], s.max_length, compute)
    assert scores > 0 and plan.memory is not None
    assert plan.memory.activations == s.micro_batch_size * s.max_length * (per_layer + scores) * dims["layers"]


def test_auto_turns_checkpointing_on_when_the_estimate_exceeds_the_device(make_cfg, monkeypatch) -> None:
    plan = make_plan(make_cfg())
    assert plan.settings.gradient_checkpointing is False  # a tiny model fits any machine
    (choice,) = [c for c in plan.choices if c.field == "train.gradient_checkpointing"]
    assert "a step needs ~" in choice.reason and "GiB" in choice.reason
    # A device this small cannot hold the tiny model's activations without recomputing them.
    monkeypatch.setattr(memory, "device_bytes", lambda device: int(plan.memory.total * 0.9))
    small = make_plan(make_cfg())
    assert small.settings.gradient_checkpointing is True and small.memory.checkpointing
    assert small.memory.total < plan.memory.total
    assert make_plan(make_cfg(**{"train.gradient_checkpointing": False})).settings.gradient_checkpointing is False


def test_lora_trainable_count_matches_peft(make_cfg) -> None:
    plan, rt = build(make_cfg(**{"train.method": "lora", "lora.r": 4}))
    model, _ = build_model(plan, rt)
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory.trainable_params(plan.model.path, "lora", plan.config.lora, plan.n_params) == real
