"""One optimizer step: accumulation invariance, non-finite guard, LoRA merge parity."""

from __future__ import annotations

import math

import pytest
import torch

from runs import train_config
from tunecraft.rundir import read_jsonl
from tunecraft.train import distributed
from tunecraft.train.loop import TrainingFailed, build, build_model, micro_batches, train_step
from tunecraft.train.optim import build_optimizer


def _after_real_step(make_cfg, micro: int, engine: str, method: str = "full"):
    """Loss, grad norm and updated weights after one real `train_step` over the same 8 examples."""
    plan, rt = build(make_cfg(**{"train.micro_batch_size": micro, "train.engine": engine,
                                 "train.method": method, "train.grad_clip": 0.1}))
    model, _ = build_model(plan, rt)
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in trainable.items()}
    # Plain SGD: the update is the clipped gradient itself (Adam's first step is ~sign(grad),
    # which would hide a wrong scale and amplify rounding in near-zero entries).
    opt = torch.optim.SGD(trainable.values(), lr=1.0)
    batches = micro_batches(plan, list(range(8)), plan.train)
    loss, norm = train_step(model, opt, batches, plan.settings, rt)
    updates = {k: before[k] - p.detach() for k, p in trainable.items()}
    return loss, norm, updates, len(batches)


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_batch8_accum1_equals_batch1_accum8_through_train_step(make_cfg, engine: str, method: str) -> None:
    """Accumulating 8 micro-batches of 1 is the same optimizer step as one batch of 8: the loss
    is normalized by the step's tokens, clipping sees the accumulated norm, AdamW the same grads."""
    loss8, norm8, up8, n8 = _after_real_step(make_cfg, 8, engine, method)
    loss1, norm1, up1, n1 = _after_real_step(make_cfg, 1, engine, method)
    assert (n8, n1) == (1, 8)  # really accumulated over more micro-batches
    assert norm8 > 0.1  # the clip engaged, so its input (the accumulated norm) matters
    assert math.isclose(loss8, loss1, rel_tol=1e-6)
    assert math.isclose(norm8, norm1, rel_tol=1e-4)
    total = math.sqrt(sum(float((u * u).sum()) for u in up8.values()))
    assert math.isclose(total, 0.1, rel_tol=1e-4)  # SGD at lr 1 applied exactly the clipped gradient
    # Summation order differs between the two (8 partial sums vs one): fp32 rounding of ~1e-7
    # of the largest entry, which a near-zero entry sees as a large relative error.
    scale = max(float(u.abs().max()) for u in up8.values())
    for key, u in up8.items():
        torch.testing.assert_close(up1[key], u, rtol=1e-4, atol=1e-5 * scale)


def test_non_finite_loss_stops_before_optimizer_step(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, rt = build(make_cfg())
    model, _ = build_model(plan, rt)
    opt = build_optimizer((p for p in model.parameters() if p.requires_grad), 1e-2, 0.0, True)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    real = distributed.compute_loss

    def nan_loss(*args, **kwargs):
        out = real(*args, **kwargs)
        out.loss_sum = out.loss_sum * math.nan
        return out

    monkeypatch.setattr(distributed, "compute_loss", nan_loss)
    with pytest.raises(TrainingFailed, match="non-finite"):
        train_step(model, opt, micro_batches(plan, list(range(8)), plan.train), plan.settings, rt)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k]), f"{k} changed although the step was refused"
    assert not opt.state  # AdamW never ran


def test_nan_mid_run_ends_run_as_failed(make_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cfg = make_cfg(**{"train.epochs": 2, "train.eval_every": 1, "train.save_every": 1})
    real = distributed.compute_loss
    calls = {"n": 0}

    def nan_on_third_step(model, batch, engine, with_accuracy=False):
        out = real(model, batch, engine, with_accuracy)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out.loss_sum = out.loss_sum + math.inf
        return out

    monkeypatch.setattr(distributed, "compute_loss", nan_on_third_step)
    with pytest.raises(TrainingFailed):
        train_config(cfg)
    run = tmp_path / "run"
    events = [e["event"] for e in read_jsonl(run / "events.jsonl")]
    assert events[-1] == "failed"
    summary = read_jsonl(run / "events.jsonl")[-1]
    assert summary["step"] == 3 and "non-finite" in summary["message"]
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]
    assert steps == [1, 2]  # step 3 was never applied nor logged


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_lora_merged_equals_unmerged(make_cfg, variant: str) -> None:
    extra = {"lora.use_rslora": True} if variant == "rslora" else {"lora.use_dora": True} if variant == "dora" else {}
    plan, rt = build(make_cfg(**{"train.method": "lora", "lora.r": 4, "lora.alpha": 32.0, **extra}))
    model, _ = build_model(plan, rt)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    alpha, r = plan.config.lora.alpha, plan.config.lora.r
    assert layer.scaling["default"] == pytest.approx(alpha / math.sqrt(r) if variant == "rslora" else alpha / r)
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude" in n and p.requires_grad]
    assert bool(magnitudes) == (variant == "dora")  # DoRA trains each weight's magnitude too
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    ids = torch.tensor([plan.train[0].input_ids])
    with torch.no_grad():
        unmerged = model(input_ids=ids, use_cache=False).logits
        with model.disable_adapter():
            plain = model(input_ids=ids, use_cache=False).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(input_ids=ids, use_cache=False).logits
    assert not torch.allclose(unmerged, plain, atol=1e-4)  # the adapter does something
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert not any("lora_" in name for name, _ in merged_model.named_parameters())  # really merged


def test_run_records_which_linear_kernels_it_chose(make_cfg, tmp_path) -> None:
    """A fast fp32 CPU run measures MKL against oneDNN and says what it picked, and why."""
    result = train_config(make_cfg(**{"train.max_steps": 1}))
    kernels = [e for e in read_jsonl(tmp_path / "run" / "events.jsonl") if e["event"] == "kernels"]
    assert len(kernels) == 1 and isinstance(kernels[0]["onednn"], bool)
    assert result.summary["linear_kernels"] == kernels[0]["message"].removeprefix("linear layers: ")
    n_fast = sum(type(m).__name__ == "FastLinear" for m in result.model.modules())
    assert (n_fast > 0) == kernels[0]["onednn"]  # the model runs what the run reports
    reference = train_config(make_cfg(**{"train.max_steps": 1, "train.engine": "reference",
                                       "train.out": str(tmp_path / "ref")}))
    assert reference.summary["linear_kernels"] is None  # the yardstick path stays plain


def test_dora_run_trains_magnitudes_on_the_fast_engine(make_cfg) -> None:
    """A DoRA run goes through the fast engine's packed rows and moves the magnitude vectors."""
    cfg = make_cfg(**{"train.method": "lora", "lora.r": 4, "lora.use_dora": True, "train.max_steps": 2,
                      "train.lr": 1e-2})
    plan, rt = build(cfg)
    start, _ = build_model(plan, rt)
    before = {n: p.detach().clone() for n, p in start.named_parameters() if "lora_magnitude" in n}
    result = train_config(cfg)
    after = {n: p.detach() for n, p in result.model.named_parameters() if "lora_magnitude" in n}
    assert before.keys() == after.keys() and before
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert result.summary["status"] == "finished" and math.isfinite(result.summary["final_train_loss"])
