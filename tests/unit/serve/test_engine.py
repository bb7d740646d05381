"""The generation engine: batching, sampling, stop handling, adapters sharing one base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runs import build_full_run, build_lora_run
from tunecraft.serve.engine import (
    GenerationError,
    LoadedModel,
    ModelCache,
    SamplingParams,
    TextTracker,
    generate,
    generate_chat,
    load_target,
    prompt_logprobs,
    stream,
)

CONVS = [[{"role": "user", "content": t}] for t in ("hello", "refund request received", "the quick brown fox jumps", "x")]


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_run(tmp_path_factory.mktemp("eng") / "lora", tiny_model_dir, system_prompt="Be brief.")


@pytest.fixture(scope="module")
def lm(lora_run: Path) -> LoadedModel:
    return load_target(str(lora_run))


def test_run_dir_prompt_uses_training_rendering(lm: LoadedModel) -> None:
    from tunecraft.data.render import prompt_ids

    ids = lm.chat_prompt(CONVS[0])
    expected = prompt_ids(lm.tokenizer, [{"role": "system", "content": "Be brief."}, *CONVS[0]], "auto")
    assert ids == expected and lm.name == "lora" and lm.adapter == "lora"
    assert lm.eos_token_ids[0] == lm.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_batched_greedy_equals_one_by_one(lm: LoadedModel) -> None:
    params = SamplingParams(max_tokens=24)
    alone = [generate_chat(lm, [c], params)[0] for c in CONVS]
    batched = generate_chat(lm, CONVS, params)
    assert [a.token_ids for a in alone] == [b.token_ids for b in batched]
    assert [a.text for a in alone] == [b.text for b in batched]


def test_stream_deltas_join_to_full_text(lm: LoadedModel) -> None:
    params = SamplingParams(max_tokens=16)
    full = generate_chat(lm, CONVS[:1], params)[0].text
    assert "".join(stream(lm, lm.chat_prompt(CONVS[0]), params)) == full


def test_seeded_sampling_is_reproducible(lm: LoadedModel) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True)
    a, b = (generate_chat(lm, CONVS[:1], params)[0] for _ in range(2))
    other = generate_chat(lm, CONVS[:1], SamplingParams(max_tokens=16, temperature=1.0, seed=4, ignore_eos=True))[0]
    assert a.token_ids == b.token_ids and a.token_ids != other.token_ids


def test_stops_at_end_of_turn_without_emitting_it(lm: LoadedModel) -> None:
    # Make the end-of-turn token the only choice by generating from a prompt whose greedy path
    # reaches it is model-dependent; instead declare the first greedy token an end-of-turn token.
    first = generate_chat(lm, CONVS[:1], SamplingParams(max_tokens=1))[0].token_ids[0]
    stopper = LoadedModel(**{**lm.__dict__, "eos_token_ids": (first,)})
    out = generate_chat(stopper, CONVS[:1], SamplingParams(max_tokens=8))[0]
    assert out.finish_reason == "stop" and out.token_ids == [] and out.text == ""


def test_context_budget_is_enforced(lm: LoadedModel) -> None:
    with pytest.raises(GenerationError, match="context length is 512"):
        generate(lm, [[5] * 10], SamplingParams(max_tokens=600))


def test_prompt_logprobs_match_forward(lm: LoadedModel) -> None:
    ids = lm.text_prompt("the quick brown fox")
    out = prompt_logprobs(lm, ids, top=2)
    with lm.activate() as module, torch.no_grad():
        logp = torch.log_softmax(module(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    assert out.logprobs[0] is None and out.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert out.logprobs[t] == pytest.approx(float(logp[t - 1, ids[t]]), abs=1e-6)
        assert len(out.top_logprobs[t]) == 2


def test_adapters_share_base_and_stay_separate(tiny_model_dir: Path, lora_run: Path, tmp_path: Path) -> None:
    other = build_lora_run(tmp_path / "other", tiny_model_dir, seed=9)
    full = build_full_run(tmp_path / "full", tiny_model_dir)
    cache = ModelCache()
    a = load_target(str(lora_run), cache=cache)
    b = load_target(str(other), cache=cache)
    base = load_target(str(tiny_model_dir), cache=cache, name="base")
    f = load_target(str(full), cache=cache)
    assert a.shared is b.shared is base.shared and f.shared is not a.shared
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    outs = {m.name: generate_chat(m, CONVS[:1], params)[0].token_ids for m in (a, b, base, f)}
    ids = a.text_prompt("the quick brown fox")
    scores = {m.name: tuple(round(x, 4) for x in prompt_logprobs(m, ids).logprobs[1:]) for m in (a, b, base, f)}
    assert len(set(scores.values())) == 4  # four different models behind one shared base + one full
    # each equals the same target loaded on its own (the adapter switch is exact)
    assert generate_chat(load_target(str(other)), CONVS[:1], params)[0].token_ids == outs["other"]
    assert generate_chat(load_target(str(tiny_model_dir)), CONVS[:1], params)[0].token_ids == outs["base"]


class _CharTokenizer:
    """One character per token id (enough to exercise stop-string and hold-back logic)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def _feed(text: str, stop: list[str]) -> tuple[list[str], TextTracker]:
    tracker = TextTracker(_CharTokenizer(), stop)
    deltas = []
    for ch in text:
        deltas.append(tracker.push(ord(ch)))
        if tracker.stopped:
            break
    else:
        deltas.append(tracker.flush())
    return deltas, tracker


def test_stop_string_cuts_and_holds_back_prefixes() -> None:
    deltas, tracker = _feed("hello END world", ["END"])
    assert "".join(deltas) == "hello " and tracker.stopped
    # "E" and "EN" were held back until they could no longer be a stop string
    deltas, tracker = _feed("hello EN", ["END"])
    assert "".join(deltas) == "hello EN" and not tracker.stopped
    assert "EN" not in "".join(deltas[:-1])


def test_earliest_of_several_stops_wins() -> None:
    deltas, _ = _feed("abcXYdefZZ", ["ZZ", "XY"])
    assert "".join(deltas) == "abc"
