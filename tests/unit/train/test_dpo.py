"""DPO: loss and gradients equal a written-out reference computation; accumulation invariance;
cached reference log-probs equal ones computed in the step; the prompt is computed once."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tiny import write_preference_data
from tunecraft.config import build_config
from tunecraft.data.pairs import packed_pair_batch, padded_pair_batch
from tunecraft.data.render import IGNORE
from tunecraft.train import dpo
from tunecraft.train.loop import build, build_model, micro_batches, train_step

BETA = 0.3  # not the default, so a forgotten beta shows


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return write_preference_data(root / "train.jsonl", 24), write_preference_data(root / "val.jsonl", 8, seed=1, layout="openai")


def _cfg(tiny_model_dir: Path, files: tuple[Path, Path], out: Path, **values: Any):
    base = {"model.name": str(tiny_model_dir), "data.train": str(files[0]), "data.val": str(files[1]),
            "train.out": str(out), "train.precision": "fp32", "train.lr": 1e-3, "train.epochs": 1,
            "train.batch_size": 8, "train.micro_batch_size": 8, "train.method": "full",
            "train.objective": "dpo", "train.dpo.beta": BETA, "train.grad_clip": 1e9}
    return build_config(values={**base, **values})


def _ref_logps(model: Any, pairs: list[Any]) -> list[tuple[float, float]]:
    with torch.no_grad():
        return [(float(_answer_logp(model, p.chosen)), float(_answer_logp(model, p.rejected))) for p in pairs]


def _answer_logp(model: Any, seq: Any) -> torch.Tensor:
    """Written out: the full logits of one sequence alone, log-softmax, the answer's targets summed."""
    logits = model(input_ids=torch.tensor([seq.input_ids]), use_cache=False).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits, -1)[:-1]  # position t scores token t+1
    targets = torch.tensor(seq.labels[1:])
    mask = targets != IGNORE
    return logp[mask].gather(-1, targets[mask].unsqueeze(-1)).sum()


def _reference_dpo(model: Any, pairs: list[Any], ref: list[tuple[float, float]], sft_weight: float) -> torch.Tensor:
    """-mean log σ(β[(π_c - ref_c) - (π_r - ref_r)]) + w · NLL(chosen tokens) / chosen tokens."""
    losses, nll, n_chosen = [], 0.0, 0
    for pair, (rc, rr) in zip(pairs, ref):
        pc, pr = _answer_logp(model, pair.chosen), _answer_logp(model, pair.rejected)
        losses.append(-F.logsigmoid(BETA * ((pc - rc) - (pr - rr))))
        nll = nll - pc
        n_chosen += sum(1 for t in pair.chosen.labels[1:] if t != IGNORE)
    return torch.stack(losses).mean() + sft_weight * nll / n_chosen


def _nudge(model: Any, only: str = "") -> None:
    """Move the weights off the reference (the first DPO step of an untouched model has margin 0)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and only in name:
                p.add_(torch.randn(p.shape, generator=gen) * (0.05 if only else 0.02))


def _our_step(plan: Any, rt: Any, model: Any) -> tuple[float, dict[str, torch.Tensor], int]:
    """Loss and gradient (SGD at lr 1 applies exactly the gradient) of one real `train_step`."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in params.items()}
    batches = micro_batches(plan, list(range(8)), plan.train)
    metrics: dict[str, float] = {}
    loss, _ = train_step(model, torch.optim.SGD(params.values(), lr=1.0), batches, plan.settings, rt, metrics)
    assert 0.0 <= metrics["preference_accuracy"] <= 1.0 and "reward_margin" in metrics
    grads = {k: before[k] - p.detach() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(before[k])
    return loss, grads, len(batches)


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_loss_and_grads_equal_written_out_dpo(tiny_model_dir: Path, pair_files, tmp_path: Path,
                                              engine: str, sft_weight: float) -> None:
    """Cached reference log-probs; the step's loss and gradient equal the written-out DPO's, and
    8 micro-batches of 1 pair make the same step as one of 8."""
    plan, rt = build(_cfg(tiny_model_dir, pair_files, tmp_path / "run", **{"train.engine": engine,
                                                                           "train.dpo.sft_weight": sft_weight}))
    model, _ = build_model(plan, rt)
    plan = dpo.with_reference(plan, rt, model)
    pairs = plan.train[:8]
    ref = _ref_logps(model, pairs)
    for p, r in zip(pairs, ref):  # the cache holds the model-as-loaded's log-probs
        assert p.ref == pytest.approx(r, rel=1e-5, abs=1e-4)
    _nudge(model)
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    expected = _reference_dpo(model, pairs, ref, sft_weight)
    grads = dict(zip(params, torch.autograd.grad(expected, list(params.values()))))
    assert float(expected) > 0.05 and not math.isclose(float(expected), math.log(2), rel_tol=1e-3)

    loss8, grads8, n8 = _our_step(plan, rt, model)
    accumulated = dataclasses.replace(plan, settings=dataclasses.replace(plan.settings, micro_batch_size=1))
    loss1, grads1, n1 = _our_step(accumulated, rt, model)
    assert (n8, n1) == (1, 8)
    assert loss8 == pytest.approx(float(expected), rel=1e-5)
    assert loss1 == pytest.approx(loss8, rel=1e-6)
    for k, g in grads.items():
        torch.testing.assert_close(grads8[k], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
        torch.testing.assert_close(grads1[k], grads8[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_lora_reference_in_the_step_equals_cached(tiny_model_dir: Path, pair_files, tmp_path: Path, engine: str) -> None:
    """LoRA's reference is the base with adapters disabled: scored in the step (no cache) or
    cached before training, the loss and gradients are the same, and the written-out DPO's."""
    plan, rt = build(_cfg(tiny_model_dir, pair_files, tmp_path / "run", **{"train.engine": engine,
                                                                           "train.method": "lora", "lora.r": 4, "lora.alpha": 32}))
    model, _ = build_model(plan, rt)
    cached = dpo.with_reference(plan, rt, model)
    _nudge(model, only="lora_B")  # a non-trivial adapter: policy differs from the reference
    assert plan.train[0].ref is None and cached.train[0].ref is not None
    with model.disable_adapter():
        ref = _ref_logps(model, plan.train[:8])
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    expected = _reference_dpo(model, plan.train[:8], ref, 0.0)
    grads = dict(zip(params, torch.autograd.grad(expected, list(params.values()))))

    loss_live, grads_live, _ = _our_step(plan, rt, model)
    loss_cached, grads_cached, _ = _our_step(cached, rt, model)
    assert loss_live == pytest.approx(float(expected), rel=1e-5)
    assert loss_cached == pytest.approx(loss_live, rel=1e-5)
    for k, g in grads.items():
        torch.testing.assert_close(grads_live[k], g, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads_cached[k], grads_live[k], rtol=1e-4, atol=1e-7)


def test_packed_pairs_compute_each_prompt_once(tiny_model_dir: Path, pair_files, tmp_path: Path) -> None:
    """A pair's common prompt sits once in the flat row (its last token once per answer), and
    every answer target is tagged with its own sequence."""
    plan, _ = build(_cfg(tiny_model_dir, pair_files, tmp_path / "run"))
    pairs = plan.train[:4]
    packed, padded = packed_pair_batch(pairs), padded_pair_batch(pairs, plan.tokenizer.pad_token_id)
    assert packed.n_loss == padded.n_loss and packed.n_tokens == padded.n_tokens
    prompts = []
    for p in pairs:
        k = 0
        while p.chosen.input_ids[k] == p.rejected.input_ids[k] and p.chosen.labels[k + 1] == IGNORE:
            k += 1
        prompts.append(k)
    answers = sum(len(s.input_ids) - k for p, k in zip(pairs, prompts) for s in p.sequences)
    assert packed.n_computed < answers + sum(prompts)  # a system prompt shared by all: once too
    assert packed.n_computed < 0.6 * padded.n_tokens
    for batch in (packed, padded):
        tagged = batch.seq_ids[batch.batch.labels != IGNORE]
        counts = torch.bincount(tagged, minlength=8).tolist()
        assert counts == [sum(1 for t in s.labels[1:] if t != IGNORE) for p in pairs for s in p.sequences]
        assert bool((batch.seq_ids[batch.batch.labels == IGNORE] == -1).all())


def test_sft_data_with_dpo_and_pairs_without_are_refused(tiny_model_dir: Path, pair_files, chat_data: Path,
                                                         tmp_path: Path) -> None:
    from tunecraft.errors import DataError

    with pytest.raises(DataError, match="preference pairs"):
        build(_cfg(tiny_model_dir, (chat_data, pair_files[1]), tmp_path / "a"))
    with pytest.raises(DataError, match="--method dpo"):
        build(_cfg(tiny_model_dir, pair_files, tmp_path / "b", **{"train.objective": "sft"}))


def _with_dropout(tiny_model_dir: Path, out: Path, p: float) -> Path:
    """A copy of the tiny model whose config asks for attention dropout."""
    import json
    import shutil

    shutil.copytree(tiny_model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "attention_dropout": p}))
    return out


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_dropout_is_off_in_dpo_so_the_untrained_policy_scores_like_its_reference(
        tiny_model_dir: Path, pair_files, tmp_path: Path, engine: str) -> None:
    """Before any step the policy is the reference: every margin must be 0 and the loss ln 2.
    With the model's dropout on (what training mode gives) the margins are noise instead."""
    model_dir = _with_dropout(tiny_model_dir, tmp_path / "model", 0.3)
    plan, rt = build(_cfg(model_dir, pair_files, tmp_path / "run", **{"train.engine": engine}))
    noisy, _ = build_model(plan, rt)  # training mode, the config's dropout on
    torch.manual_seed(0)
    cached = dpo.with_reference(plan, rt, noisy)
    # The same reference log-probs on a model whose dropout was never turned off: not ln 2.
    fresh, _ = build_model(plan, rt)
    assert fresh.training and any(getattr(m, "attention_dropout", 0.0) == 0.3 for m in fresh.modules())
    with torch.no_grad():
        on = dpo.pair_loss(fresh, micro_batches(cached, list(range(8)), cached.train)[0], engine, beta=BETA)
    assert (on.pair_losses - math.log(2)).abs().max() > 2e-3
    # with_reference turned it off: in training mode, the policy now scores exactly like the reference.
    assert noisy.training and dpo.disable_dropout(noisy) == 0
    with torch.no_grad():
        off = dpo.pair_loss(noisy, micro_batches(cached, list(range(8)), cached.train)[0], engine, beta=BETA)
    torch.testing.assert_close(off.pair_losses, torch.full((8,), math.log(2)), rtol=0, atol=1e-5)


def test_disable_dropout_leaves_the_asked_for_lora_dropout(tiny_model_dir: Path, pair_files, tmp_path: Path) -> None:
    model_dir = _with_dropout(tiny_model_dir, tmp_path / "model", 0.3)
    plan, rt = build(_cfg(model_dir, pair_files, tmp_path / "run", **{"train.method": "lora", "lora.r": 4, "lora.alpha": 32,
                                                                      "lora.dropout": 0.2}))
    model, _ = build_model(plan, rt)
    assert dpo.disable_dropout(model) > 0
    lora = [m for n, m in model.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)]
    assert lora and all(m.p == 0.2 for m in lora)
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())
