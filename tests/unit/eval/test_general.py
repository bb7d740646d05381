"""General abilities: KL from the base and NLL on the base's own answers to generic prompts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from runs import build_lora_run
from tunecraft.eval.general import KL_THRESHOLD, general_prompts, measure_general
from tunecraft.serve.engine import SamplingParams, generate, load_target


def test_the_shipped_prompts_are_many_and_varied() -> None:
    prompts = general_prompts()
    assert 20 <= len(prompts) <= 30 and len(set(prompts)) == len(prompts)


def test_a_model_against_itself_is_zero_kl_and_kept(tiny_model_dir: Path) -> None:
    base = load_target(str(tiny_model_dir), name="base")
    res = measure_general(base, base, general_prompts()[:3], answer_tokens=8)
    assert res.kl == pytest.approx(0.0, abs=1e-6) and res.nll_base == pytest.approx(res.nll_tuned)
    assert res.kept and "kept" in res.line and res.prompts == 3


def test_kl_and_nll_by_hand_for_a_moved_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = build_lora_run(tmp_path / "run", tiny_model_dir, seed=4, scale=2.0)
    tuned = load_target(str(run), name="tuned")
    base = dataclasses.replace(load_target(str(tiny_model_dir), name="base"), template=tuned.template)
    prompt = general_prompts()[:1]
    res = measure_general(base, tuned, prompt, answer_tokens=6)
    # by hand: the base's greedy answer, then both models' next-token distributions over it
    ids = base.chat_prompt([{"role": "user", "content": prompt[0]}])
    answer = generate(base, [ids], SamplingParams(max_tokens=6))[0]
    tail = answer.token_ids + ([base.eos_token_ids[0]] if answer.finish_reason == "stop" else [])
    seq = torch.tensor([ids + tail])
    with base.activate() as m, torch.no_grad():
        lb = torch.log_softmax(m(input_ids=seq).logits[0, len(ids) - 1:-1].float(), -1)
    with tuned.activate() as m, torch.no_grad():
        lt = torch.log_softmax(m(input_ids=seq).logits[0, len(ids) - 1:-1].float(), -1)
    kl = [float(sum(pb.exp() * (pb - pt))) for pb, pt in zip(lb, lt)]
    assert res.tokens == len(tail) and res.kl == pytest.approx(sum(kl) / len(kl), rel=1e-4)
    assert res.nll_tuned == pytest.approx(-sum(float(lt[i, t]) for i, t in enumerate(tail)) / len(tail), rel=1e-4)
    assert res.kl > 0 and res.kept == (res.kl <= KL_THRESHOLD)
