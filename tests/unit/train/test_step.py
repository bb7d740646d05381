"""One optimizer step: accumulation invariance, non-finite guard, LoRA merge parity."""

from __future__ import annotations

import math

import pytest
import torch

from tunecraft.train import loop
from tunecraft.train.loop import TrainingFailed, _build_model, _micro_batches, build, train_step
from tunecraft.train.optim import build_optimizer


def _grads_after_step(make_cfg, micro: int, engine: str):
    plan, rt = build(make_cfg(**{"train.micro_batch_size": micro, "train.engine": engine}))
    model = _build_model(plan, rt)
    indices = list(range(8))
    batches = _micro_batches(plan, indices, plan.train)
    n_loss = sum(b.n_loss for b in batches)
    total = 0.0
    for b in batches:
        out = loop.compute_loss(model, b, engine)
        (out.loss_sum / n_loss).backward()
        total += float(out.loss_sum)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return total / n_loss, grads, len(batches)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_batch8_accum1_equals_batch1_accum8(make_cfg, engine: str) -> None:
    loss8, grads8, n8 = _grads_after_step(make_cfg, 8, engine)
    loss1, grads1, n1 = _grads_after_step(make_cfg, 1, engine)
    assert n1 > n8  # really accumulated over more micro-batches
    assert abs(loss8 - loss1) < 1e-5
    for key, g in grads8.items():
        torch.testing.assert_close(grads1[key], g, rtol=1e-4, atol=1e-7)


def test_non_finite_loss_stops_before_optimizer_step(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, rt = build(make_cfg())
    model = _build_model(plan, rt)
    opt = build_optimizer((p for p in model.parameters() if p.requires_grad), 1e-2, 0.0, True)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    real = loop.compute_loss

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        out.loss_sum = out.loss_sum * math.nan
        return out

    monkeypatch.setattr(loop, "compute_loss", nan_loss)
    with pytest.raises(TrainingFailed, match="non-finite"):
        train_step(model, opt, _micro_batches(plan, list(range(8)), plan.train), plan, rt)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k]), f"{k} changed although the step was refused"
    assert not opt.state  # AdamW never ran


def test_nan_mid_run_ends_run_as_failed(make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cfg = make_cfg(**{"train.epochs": 2, "train.eval_every": 1, "train.save_every": 1})
    real = loop.compute_loss
    calls = {"n": 0}

    def nan_on_third_step(model, batch, engine, with_accuracy=False):
        out = real(model, batch, engine, with_accuracy)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out.loss_sum = out.loss_sum + math.inf
        return out

    monkeypatch.setattr(loop, "compute_loss", nan_on_third_step)
    with pytest.raises(TrainingFailed):
        loop.train(cfg)
    run = tmp_path / "run"
    events = [e["event"] for e in loop.read_jsonl(run / "events.jsonl")]
    assert events[-1] == "failed"
    summary = loop.read_jsonl(run / "events.jsonl")[-1]
    assert summary["step"] == 3 and "non-finite" in summary["message"]
    steps = [r["step"] for r in loop.read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [1, 2]  # step 3 was never applied nor logged


def test_lora_merged_equals_unmerged(make_cfg) -> None:
    plan, rt = build(make_cfg(**{"train.method": "lora", "lora.r": 4}))
    model = _build_model(plan, rt)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    ids = torch.tensor([plan.train[0].input_ids])
    with torch.no_grad():
        unmerged = model(input_ids=ids, use_cache=False).logits
        base_only = model.get_base_model()
        with model.disable_adapter():
            plain = model(input_ids=ids, use_cache=False).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(unmerged, plain, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert base_only is not None


def test_run_records_which_linear_kernels_it_chose(make_cfg, tmp_path) -> None:
    """A fast fp32 CPU run measures MKL against oneDNN and says what it picked, and why."""
    result = loop.train(make_cfg(**{"train.max_steps": 1}))
    kernels = [e for e in loop.read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "kernels"]
    assert len(kernels) == 1 and isinstance(kernels[0]["onednn"], bool)
    assert result.summary["linear_kernels"] == kernels[0]["message"].removeprefix("linear layers: ")
    n_fast = sum(type(m).__name__ == "FastLinear" for m in result.model.modules())
    assert (n_fast > 0) == kernels[0]["onednn"]  # the model runs what the run reports
    reference = loop.train(make_cfg(**{"train.max_steps": 1, "train.engine": "reference",
                                       "train.out": str(tmp_path / "ref")}))
    assert reference.summary["linear_kernels"] is None  # the yardstick path stays plain
