"""QLoRA (lora.quantize=nf4): LoRA adapters over 4-bit base weights, through bitsandbytes on the CPU.

Run by test_qlora.py in a child pytest whose PYTHONPATH holds bitsandbytes (`make test` installs
it beside the venv, in .venv/qlora-site, not in it: installed, every `import peft` imports it,
and on AVX-512 BF16 CPUs it then asks the Hugging Face Hub for a kernel; see docs/qlora.md).

Parity: the 4-bit model's loss and adapter gradients equal those of the same LoRA over the
de-quantized weights in a plain model (both compute de-quantize-then-matmul in fp32; the
tolerance covers summation order). The deliverable is a plain PEFT adapter that loads over
the original base, and a merged export merges into that base's full-precision weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bitsandbytes as bnb  # the [qlora] extra
import pytest
import torch

from tunecraft.config import build_config
from tunecraft.errors import ConfigError
from tunecraft.models.facts import parameter_counts, unwrap
from tunecraft.models.load import load_model, load_peft
from tunecraft.rundir import read_jsonl
from tunecraft.train import lora, memory
from tunecraft.train.loop import build, build_model, evaluate, micro_batches, train
from tunecraft.train.loss import compute_loss
from tunecraft.train.plan import make_plan

QLORA = {"train.method": "lora", "lora.r": 4, "lora.alpha": 8, "lora.quantize": "nf4"}
LOSS_RTOL = 1e-5  # fp32, same products in a different order (oneDNN vs bitsandbytes' F.linear)
GRAD_RTOL = 1e-4  # relative to each gradient's norm


def _four_bit_layers(model: Any) -> dict[str, Any]:
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _nudge_adapters(model: Any) -> None:
    """Non-zero B matrices (peft starts them at zero, which would leave the adapters out of the loss)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _dequantized_twin(make_cfg: Any, engine: str, qmodel: Any) -> Any:
    """The same LoRA (same seed, same adapter weights) over a plain model whose linear weights
    are the 4-bit model's, de-quantized to fp32."""
    plan, rt = build(make_cfg(**{**QLORA, "lora.quantize": "none", "train.engine": engine}))
    model, _ = build_model(plan, rt)
    modules = dict(unwrap(model).named_modules())
    with torch.no_grad():
        for name, layer in _four_bit_layers(qmodel).items():
            weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            modules[name].weight.copy_(weight.float())
        adapters = {n: p for n, p in qmodel.named_parameters() if p.requires_grad}
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(adapters[name])
    return model


def _loss_and_grads(model: Any, batches: list[Any], engine: str) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total = sum(compute_loss(model, b, engine).loss_sum for b in batches)
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(total.detach()), grads


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_qlora_loss_and_grads_equal_lora_over_dequantized_weights(make_cfg: Any, engine: str) -> None:
    plan, rt = build(make_cfg(**{**QLORA, "train.engine": engine}))
    qmodel, _ = build_model(plan, rt)
    layers = _four_bit_layers(qmodel)
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 decoder layers
    assert all(m.weight.dtype == torch.uint8 for m in layers.values())  # stored packed, 2 weights a byte
    _nudge_adapters(qmodel)
    batches = micro_batches(plan, list(range(8)), plan.train)
    loss_q, grads_q = _loss_and_grads(qmodel, batches, engine)
    # An evaluation (eval mode, no grad) must leave the 4-bit layers as training needs them:
    # bitsandbytes repacks them for inference on AVX-512 BF16 CPUs unless told not to.
    evaluate(qmodel, plan, rt)
    qmodel.train()
    again, grads_again = _loss_and_grads(qmodel, batches, engine)
    assert again == pytest.approx(loss_q, rel=1e-6)
    for name, g in grads_q.items():
        torch.testing.assert_close(grads_again[name], g, rtol=1e-5, atol=1e-6 * float(g.norm()))

    twin = _dequantized_twin(make_cfg, engine, qmodel)
    loss_d, grads_d = _loss_and_grads(twin, batches, engine)
    assert loss_q == pytest.approx(loss_d, rel=LOSS_RTOL)
    assert grads_q.keys() == grads_d.keys()
    for name, g in grads_d.items():
        assert float((grads_q[name] - g).norm()) <= GRAD_RTOL * float(g.norm()) + 1e-12, name

    # The 4-bit weights really are a quantization of the originals: NF4 rounds each weight to one
    # of 16 levels of its block's scale (a relative error of ~10% on these random weights).
    original = load_model(plan.model.path)
    weight = dict(original.named_parameters())["model.layers.0.mlp.down_proj.weight"].detach()
    layer = layers["model.layers.0.mlp.down_proj.base_layer"]
    deq = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    assert 0.02 < float((deq - weight).norm() / weight.norm()) < 0.2


def test_qlora_trains_and_saves_a_plain_adapter_over_the_original_base(
    make_cfg: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # A tiny random model with frozen random embeddings learns slowly: ~0.2 nats in 16 steps.
    cfg = make_cfg(**{**QLORA, "train.lr": 5e-2, "train.epochs": 2, "train.eval_every": 4, "train.patience": None})
    plan, rt = build(cfg)
    result = train(plan, rt)
    assert result.status == "finished"
    losses = [r["loss"] for r in read_jsonl(result.run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < losses[0] - 0.1

    adapter = result.run_dir / "model"
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert Path(config["base_model_name_or_path"]) == tiny_model_dir
    assert "quantiz" not in json.dumps(config)  # nothing in it says 4-bit: a LoRA adapter like any other

    base = load_model(tiny_model_dir)  # the original, full-precision base
    model = load_peft(base, adapter).eval()
    assert not _four_bit_layers(model)
    batches = micro_batches(plan, list(range(len(plan.val))), plan.val)
    tokens = sum(b.n_loss for b in batches)
    with torch.inference_mode():
        tuned = sum(float(compute_loss(model, b, "fast").loss_sum) for b in batches) / tokens
        with model.disable_adapter():
            untuned = sum(float(compute_loss(model, b, "fast").loss_sum) for b in batches) / tokens
    # What was learned over the 4-bit weights carries to the original ones, within NF4's error.
    assert tuned < untuned - 0.1
    assert tuned == pytest.approx(result.summary["best_val_loss"], abs=0.02)

    # Merged export: the adapter's update added to the original full-precision weights.
    from tunecraft.export.export import export_run

    out = export_run(result.run_dir, "merged", tmp_path / "merged").path
    merged = load_model(out)
    original = dict(load_model(tiny_model_dir).named_parameters())
    scale = config["lora_alpha"] / config["r"]
    adapted = dict(model.named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    a = adapted["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
    b = adapted["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    merged_weight = dict(merged.named_parameters())[name]
    assert merged_weight.dtype == torch.float32
    torch.testing.assert_close(merged_weight, original[name] + scale * (b @ a), rtol=1e-5, atol=1e-6)


def test_qlora_plan_counts_four_bit_weights(make_cfg: Any) -> None:
    plan = make_plan(make_cfg(**QLORA))
    plain = make_plan(make_cfg(**{**QLORA, "lora.quantize": "none"}))
    four_bit = memory.linear_weights(plan.model.path)
    assert four_bit > 0 and plan.memory is not None and plain.memory is not None
    # fp32 compute: each 4-bit weight saves 4 - FOUR_BIT_BYTES bytes
    saved = plain.memory.weights - plan.memory.weights
    assert saved == pytest.approx(four_bit * (4 - memory.FOUR_BIT_BYTES), abs=1)
    model, _ = build_model(*build(make_cfg(**QLORA)))
    stored = sum(_four_bit_bytes(m) for m in _four_bit_layers(model).values())
    assert stored == pytest.approx(four_bit * memory.FOUR_BIT_BYTES, rel=0.05)


def test_qlora_counts_the_weights_its_bytes_stand_for(make_cfg: Any) -> None:
    """The run's "N of M parameters" line: 4-bit layers count as the weights they hold, not as
    their packed bytes (half as many), so QLoRA and LoRA over the same model say the same M."""
    qmodel, _ = build_model(*build(make_cfg(**QLORA)))
    model, _ = build_model(*build(make_cfg(**{**QLORA, "lora.quantize": "none"})))
    assert parameter_counts(qmodel) == parameter_counts(model)
    packed = sum(p.numel() for p in qmodel.parameters())
    assert packed < parameter_counts(qmodel)[1]  # what the count said before


def _four_bit_bytes(layer: Any) -> int:
    """Bytes a 4-bit layer's weight takes: the packed codes and both levels of scales (the
    16-entry code tables are constants shared by every layer)."""
    state = layer.weight.quant_state
    tensors = [layer.weight.data, state.absmax] + ([state.state2.absmax] if state.nested else [])
    return sum(t.numel() * t.element_size() for t in tensors)


def test_qlora_auto_method_is_lora(make_cfg: Any) -> None:
    plan = make_plan(make_cfg(**{**QLORA, "train.method": "auto"}))
    assert plan.settings.method == "lora"
    choice = next(c for c in plan.choices if c.field == "train.method")
    assert "lora.quantize=nf4" in choice.reason


def test_qlora_refusals_name_the_fix(make_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        make_plan(make_cfg(**{**QLORA, "train.method": "full", "train.sharding": "fsdp"}))
    assert "train.method is full" in str(err.value) and "--method lora" in str(err.value)
    assert "train.sharding=fsdp" in str(err.value)

    cfg = build_config(values={"lora.quantize": "nf4", "train.method": "lora"})
    monkeypatch.setattr(lora, "package_available", lambda name: name != "bitsandbytes")
    (missing,) = lora.qlora_problems(cfg, torch.device("cpu"))
    assert "needs bitsandbytes, not installed here: pip install 'bitsandbytes>=0.50.2'" in missing
    monkeypatch.undo()

    (device,) = lora.qlora_problems(cfg, torch.device("mps"))
    assert "on cuda and cpu" in device and "not on mps" in device

    monkeypatch.setattr(lora, "probe_4bit", lambda device_type: "RuntimeError: no kernel")
    (broken,) = lora.qlora_problems(cfg, torch.device("cpu"))
    assert "could not run a 4-bit layer on cpu (RuntimeError: no kernel)" in broken
    assert "lora.quantize=none" in broken


def test_probe_trains_a_four_bit_layer_on_this_cpu() -> None:
    """The check the plan runs is a real 4-bit forward and backward (not a version lookup)."""
    assert lora.probe_4bit("cpu") is None
    assert lora.qlora_problems(build_config(values={"lora.quantize": "nf4"}), torch.device("cpu")) == []
