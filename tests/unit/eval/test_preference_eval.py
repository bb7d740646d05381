"""Held-out preference metrics: each number is the written-out formula on real log-probs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from runs import build_lora_run
from tiny import write_preference_data
from tunecraft.data.loader import load_examples
from tunecraft.eval.preference import compare, pair_logps, paired_test, preference_metrics, tokenize_pairs
from tunecraft.serve.engine import ModelCache, load_target


def test_metrics_are_the_formulas() -> None:
    policy = torch.tensor([[-1.0, -3.0], [-2.0, -1.0], [-4.0, -6.0], [-1.0, -1.5]])
    ref = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-3.0, -3.0], [-1.0, -1.0]])
    m = preference_metrics(policy, ref, beta=0.5)
    margin = 0.5 * ((policy[:, 0] - ref[:, 0]) - (policy[:, 1] - ref[:, 1]))  # 1.0, -0.5, 1.0, 0.25
    assert m["preference_accuracy"] == 0.75 and m["logp_accuracy"] == 0.75
    assert m["reward_margin"] == pytest.approx(float(margin.mean()))
    assert m["dpo_loss"] == pytest.approx(float(-F.logsigmoid(margin).mean()))
    assert m["dpo_loss_ci95"] == pytest.approx(1.96 * float((-F.logsigmoid(margin)).std()) / 2)
    assert "preference_accuracy" not in preference_metrics(policy, None, 0.5)


def test_paired_test_counts_the_discordant_pairs_and_gives_the_exact_binomial_p() -> None:
    a = [True, True, True, True, False, False, True]
    b = [True, False, False, False, True, False, True]
    t = paired_test(a, b)
    assert (t["both_right"], t["both_wrong"], t["only_a"], t["only_b"]) == (2, 1, 3, 1)
    # 4 discordant pairs split 3:1; two-sided: 2 * P(X <= 1), X ~ Binomial(4, 1/2) = 2 * 5/16.
    assert t["p_two_sided"] == pytest.approx(2 * (1 + 4) / 16)
    assert paired_test(a, a)["p_two_sided"] == 1.0  # no discordant pair: no evidence either way
    assert paired_test([True] * 6, [False] * 6)["p_two_sided"] == pytest.approx(2 / 64)
    with pytest.raises(ValueError, match="same pairs"):
        paired_test(a, b[:-1])


def test_compare_scores_the_answers_as_training_renders_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = build_lora_run(tmp_path / "run", tiny_model_dir)
    examples = load_examples(write_preference_data(tmp_path / "test.jsonl", 6))
    cache = ModelCache()
    tuned, base = load_target(str(run), cache=cache), load_target(str(tiny_model_dir), cache=cache)
    systems = compare(tuned, base, examples, beta=0.1)
    pairs = tokenize_pairs(tuned, examples)
    policy, ref = pair_logps(tuned, pairs), pair_logps(base, pairs)
    assert not torch.allclose(policy, ref)  # the adapter changes the scores
    # One answer scored alone with full logits: the summed log-probs of its loss-bearing targets.
    seq = pairs[0].chosen
    with tuned.activate() as module, torch.no_grad():
        logits = module(input_ids=torch.tensor([seq.input_ids]).to(tuned.device)).logits[0].float().cpu()
    targets = torch.tensor(seq.labels[1:])
    mask = targets != -100
    alone = torch.log_softmax(logits[:-1], -1)[mask].gather(-1, targets[mask].unsqueeze(-1)).sum()
    assert float(policy[0, 0]) == pytest.approx(float(alone), rel=1e-4)
    expected = preference_metrics(policy, ref, 0.1)
    assert systems["tuned"]["preference_accuracy"] == expected["preference_accuracy"]
    assert math.isclose(systems["tuned"]["dpo_loss"], expected["dpo_loss"], rel_tol=1e-6)
    assert systems["base"]["logp_accuracy"] == preference_metrics(ref, None, 0.1)["logp_accuracy"]
