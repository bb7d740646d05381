"""LoRA evaluations on merged weights (train.lora.merged_for_eval): the loss the adapters give,
the training weights put back exactly, and no merge where one would be wrong."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunecraft.train import loop
from tunecraft.train.loop import evaluate
from tunecraft.train.lora import merged_for_eval


def _base_weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "base_layer" in n}


def test_fp32_merged_evaluation_equals_the_adapters_and_restores_every_weight(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model()
    before = {n: (p, p.detach().clone()) for n, p in _base_weights(model).items()}
    assert before and loop._merge_for_eval(plan, rt, model)
    with torch.inference_mode(), merged_for_eval(model, enabled=False) as merged:
        assert not merged
        through_adapters = loop._evaluate_sft(model, plan, rt, None)
    merged_result = evaluate(model, plan, rt)  # what the loop runs: merged
    assert merged_result.loss == pytest.approx(through_adapters.loss, abs=1e-5)
    assert merged_result.correct == through_adapters.correct
    after = _base_weights(model)
    for name, (obj, values) in before.items():  # the very same tensors, bit for bit
        assert after[name] is obj and torch.equal(obj, values)
    assert not any(m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))


def test_bf16_training_continues_on_the_weights_it_left(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"train.precision": "bf16"})
    base = {n: p.detach().clone() for n, p in _base_weights(model).items()}
    assert next(iter(_base_weights(model).values())).dtype == torch.bfloat16
    with torch.inference_mode(), merged_for_eval(model) as merged:
        assert merged  # inside: every adapted layer holds W + scale * B A, adapters off
        assert all(m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))
        changed = [n for n, p in _base_weights(model).items() if not torch.equal(p, base[n])]
        assert changed
    assert all(torch.equal(p, base[n]) for n, p in _base_weights(model).items())  # no double rounding


def test_no_merge_where_it_would_be_wrong(make_lora_model: Any) -> None:
    plan, rt, model = make_lora_model(**{"lora.use_dora": True})
    with torch.inference_mode(), merged_for_eval(model) as merged:
        assert not merged  # DoRA rescales each column: not one merged weight per step of B A
    plan, rt, model = make_lora_model()
    with model.disable_adapter(), merged_for_eval(model) as merged:
        assert not merged  # a reference pass (adapters off) must not get the adapters merged in
    plan, rt, model = make_lora_model(**{"train.compile": True})
    assert not loop._merge_for_eval(plan, rt, model)  # a swapped weight would recompile the layers
