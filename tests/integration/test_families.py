"""Model families end to end on tiny random models of each family's shape (tests/tiny.py): Llama 3,
Qwen2.5, Mistral and Gemma 3, each with a tokenizer of its kind and its turn layout.

Per family: the template's end-of-turn token is found (it is not always the EOS), the loss mask
covers exactly the assistant's answers and their end-of-turn tokens, the fast engine's packed
loss equals the reference engine's, and the whole loop runs: LoRA training to memorization,
evaluation with closed-label decoding, adapter and merged exports (each verifies itself against
the run) and generation that stops at the end of the turn with the trained answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import FAMILIES, INTENTS, build_family_model_dir
from tunecraft import rundir
from tunecraft.config import build_config
from tunecraft.data.render import IGNORE, end_of_turn, tokenize_example
from tunecraft.data.schema import Example, Message
from tunecraft.eval.evaluate import EvalOptions, evaluate_run
from tunecraft.export import export_run
from tunecraft.models.load import load_model, load_tokenizer
from tunecraft.serve.engine import SamplingParams, generate_chat, load_target

NAMES = list(FAMILIES)


@pytest.fixture(scope="module", params=NAMES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, build_family_model_dir(tmp_path_factory.mktemp(f"family-{name}"), name)


def _chat(*turns: str) -> Example:
    roles = ["user", "assistant"] * len(turns)
    return Example("chat", "t.jsonl", 1, messages=tuple(Message(r, t) for r, t in zip(roles, turns)))


def _loss_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for k, (tid, lab) in enumerate(zip(ids, labels)):
        if lab == IGNORE:
            continue
        if spans and labels[k - 1] != IGNORE:
            spans[-1].append(tid)
        else:
            spans.append([tid])
    return spans


def test_the_mask_covers_the_answers_and_their_end_of_turn(family_dir: tuple[str, Path]) -> None:
    name, model_dir = family_dir
    family = FAMILIES[name]
    tok = load_tokenizer(model_dir)
    assert end_of_turn(tok) == family.end_of_turn
    ex = tokenize_example(_chat("hello about my refund", "refund", "and my pin reset", "pin_reset"), tok)
    spans = _loss_spans(ex.input_ids, ex.labels)
    decoded = [tok.decode(s, skip_special_tokens=False).strip() for s in spans]
    assert decoded == ["refund" + family.end_of_turn, "pin_reset" + family.end_of_turn]
    end_id = tok.convert_tokens_to_ids(family.end_of_turn)
    assert all(s[-1] == end_id for s in spans)  # nothing after the end token bears loss (Gemma's "\n")


def test_the_fast_engine_matches_the_reference_loss(family_dir: tuple[str, Path]) -> None:
    """The packed, unpadded engine computes each family's attention (biases, QK norms, Gemma's
    scalings and local layers) as the model's own forward does."""
    from tunecraft.data.batching import packed_batches, padded_batches
    from tunecraft.train.loss import compute_loss, supports_fast_path

    name, model_dir = family_dir
    tok = load_tokenizer(model_dir)
    examples = [tokenize_example(_chat(f"hello there, about my {i.replace('_', ' ')} please", i), tok) for i in INTENTS]
    idx = list(range(len(examples)))
    model = load_model(model_dir, torch.float32)
    assert supports_fast_path(model)
    with torch.no_grad():
        ref = compute_loss(model, padded_batches(examples, idx, len(idx), tok.pad_token_id)[0], "reference").loss_sum
        fast = compute_loss(model, packed_batches(examples, idx, len(idx))[0], "fast").loss_sum
    assert float(fast) == pytest.approx(float(ref), rel=1e-5)
    window = getattr(model.config, "sliding_window", None)
    if window and FAMILIES[name].name == "gemma3":  # the local layer's window is shorter than the examples
        assert min(len(e.input_ids) for e in examples) > window


def test_the_whole_loop(family_dir: tuple[str, Path], tmp_path: Path) -> None:
    """Train (to memorization: a full fine-tune, since LoRA on a random 32-wide model barely
    moves it), record the label set, evaluate constrained, export merged, generate to the end of
    the turn; and a LoRA run of the same family exports its adapter and merged model, verified."""
    from runs import build_lora_run
    from tunecraft.train.labels import record_labels
    from tunecraft.train.loop import build, train

    name, model_dir = family_dir
    family = FAMILIES[name]
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{opener}, about my {i.replace('_', ' ')}"},
                          {"role": "assistant", "content": i}]}
            for opener in ("hi", "hello", "hey there", "excuse me") for i in INTENTS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    cfg = build_config(values={
        "model.name": str(model_dir), "data.train": str(data), "data.val": str(data), "train.out": str(run),
        "train.method": "full", "train.lr": 1e-2, "train.epochs": 60, "train.batch_size": 8,
        "train.precision": "fp32", "train.patience": None, "train.warmup_ratio": 0.0,
    })
    plan, rt = build(cfg)
    assert train(plan, rt).status == "finished"
    # What `tunecraft train` does next for a closed-label task: labels.json (its trie ends at the end of turn).
    record_labels(run, plan.config, plan.data.train_examples, plan.data.val_examples, plan.model.path)

    payload = evaluate_run(run, EvalOptions(data=data, baselines=[], general=False, report=False))
    tuned = payload["systems"]["tuned"]
    assert tuned["constrained"] and tuned["metrics"]["invalid_labels"] == 0
    assert tuned["metrics"]["accuracy"] >= 0.9, rundir.read_summary(run)  # memorized

    merged = export_run(run, "merged", tmp_path / "merged")  # verifies itself against the run's outputs
    lm = load_target(str(merged.path))
    answers = generate_chat(lm, [[{"role": "user", "content": "hello, about my refund"}]],
                            SamplingParams(max_tokens=16, temperature=0.0))
    assert answers[0].finish_reason == "stop"  # stopped at the end of the turn, not the length
    assert answers[0].text.strip() == "refund" and family.end_of_turn not in answers[0].text

    lora = build_lora_run(tmp_path / "lora-run", model_dir, scale=0.05)
    for fmt in ("adapter", "merged"):
        assert export_run(lora, fmt, tmp_path / f"lora-{fmt}").path.is_dir()


# GGUF maps these families 1:1 (transformers' GGUF loader reads them back); the others are
# refused with the reason: Llama 3.1+'s llama3 RoPE scaling (llama.cpp stores it as a rope_freqs
# tensor the loader ignores), and SentencePiece vocabularies (Mistral, Gemma).
GGUF_FAMILIES = {"qwen2"}


def test_gguf_export_reloads_with_equal_greedy_output_or_is_refused(family_dir: tuple[str, Path],
                                                                   tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from runs import build_full_run
    from tunecraft.errors import TunecraftError

    name, model_dir = family_dir
    run = build_full_run(tmp_path / "run", model_dir, scale=0.0)
    if name not in GGUF_FAMILIES:
        with pytest.raises(TunecraftError, match="GGUF export"):
            export_run(run, "gguf", tmp_path / "gguf")
        return
    res = export_run(run, "gguf", tmp_path / "gguf", gguf_type="f16")  # its own check: logits within tolerance
    lm = load_target(str(run))
    conv = [{"role": "user", "content": "hello, about my refund"}]
    want = generate_chat(lm, [conv], SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    model = AutoModelForCausalLM.from_pretrained(str(res.path), gguf_file="model.gguf", dtype=torch.float32)
    assert model.config.model_type == name
    ids = lm.chat_prompt(conv)
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out[0, len(ids):].tolist() == want
