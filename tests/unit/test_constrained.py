"""The label trie and its scorer (tunecraft.constrained), and the engine's constrained answers."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch

from runs import build_lora_run
from tunecraft.constrained import LabelTrie, build_trie, label_token_ids, score_labels, shared_prefix
from tunecraft.data.render import IGNORE, tokenize_example
from tunecraft.data.schema import Example, Message
from tunecraft.labels import LabelSet, calibrate
from tunecraft.serve.engine import SamplingParams, classify, label_events, load_target

LABELS = ["card_arrival", "card_lost", "refund", "transfer", "pin_reset", "balance", "lost_card", "out_of_scope"]
TEXTS = ["hello there", "my card is lost, please help me now ok", "x", "where is my refund for the order?"]


@pytest.fixture(scope="module")
def lm(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    run = build_lora_run(tmp_path_factory.mktemp("labels") / "run", tiny_model_dir, seed=2)
    model = load_target(str(run))
    labels = LabelSet(tuple(sorted(LABELS)), reject_label="out_of_scope")
    return dataclasses.replace(model, labels=labels)


def _brute_force(lm, prompt: list[int], seq: tuple[int, ...]) -> float:
    """A label's log-prob from one plain forward pass over prompt + label (no cache, no tree mask)."""
    with lm.activate() as module, torch.inference_mode():
        logp = torch.log_softmax(module(input_ids=torch.tensor([prompt + list(seq)])).logits[0].float(), -1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(seq))


def test_label_tokens_are_the_answer_training_taught(tiny_tokenizer) -> None:
    eos = [tiny_tokenizer.eos_token_id]
    ids = label_token_ids(tiny_tokenizer, "refund", "auto", eos)
    example = Example("chat", "t", 1, (Message("user", "x"), Message("assistant", "refund")))
    tok = tokenize_example(example, tiny_tokenizer)
    assert ids == [t for t in tok.labels if t != IGNORE] and ids[-1] == eos[0]


def test_trie_structure_and_refusals() -> None:
    trie = LabelTrie.build(["ab", "ac", "d"], [(1, 2, 9), (1, 3, 9), (4, 9)])
    assert trie.allowed([]) == {1, 4} and trie.allowed([1]) == {2, 3} and trie.allowed([1, 2, 9]) == set()
    assert [trie.token[n] for n in trie.path(1)] == [1, 3, 9]
    with pytest.raises(ValueError, match="no label's path"):
        trie.allowed([2])
    with pytest.raises(ValueError, match="same tokens"):
        LabelTrie.build(["a", "b"], [(1, 9), (1, 9)])
    with pytest.raises(ValueError, match="prefix"):
        LabelTrie.build(["a", "b"], [(1,), (1, 9)])


def test_exact_scores_match_a_forward_pass_per_label_and_sum_to_one(lm) -> None:
    trie = lm.label_trie()
    prompts = [lm.chat_prompt([{"role": "user", "content": t}]) for t in TEXTS]
    with lm.activate() as module:
        scores = score_labels(module, prompts, trie, lm.device, margin=None)  # batched, packed into one row
    for prompt, s in zip(prompts, scores):
        assert sum(s.probs) == pytest.approx(1.0, abs=1e-9) and all(s.exact)
        for i, seq in enumerate(trie.sequences):
            assert s.logprobs[i] == pytest.approx(_brute_force(lm, prompt, seq), abs=1e-4)


def test_the_shared_prefix_leaves_every_prompt_its_last_token() -> None:
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # a prompt inside another keeps its last token
    assert shared_prefix([[7, 2], [1, 2]]) == 0 and shared_prefix([[5]]) == 0
    assert shared_prefix([[1, 2, 3]]) == 2


@pytest.mark.parametrize("case", ["chat", "no common start", "one prompt inside another"])
def test_packing_a_shared_prefix_once_changes_no_score(lm, case: str) -> None:
    """Prompts whose shared prefix is laid down once score as each prompt alone, in one forward
    pass per label (the template's system prompt and header are what chat prompts share)."""
    trie = lm.label_trie()
    chat = [lm.chat_prompt([{"role": "system", "content": "Route the message to one intent label."},
                            {"role": "user", "content": t}]) for t in TEXTS]
    prompts = {"chat": chat, "no common start": [chat[1][3:], chat[0]],
               "one prompt inside another": [chat[1][:9], chat[1], chat[1][:12]]}[case]
    with lm.activate() as module:
        scores = score_labels(module, prompts, trie, lm.device, margin=None)
    for prompt, s in zip(prompts, scores):
        for i, seq in enumerate(trie.sequences):
            assert s.logprobs[i] == pytest.approx(_brute_force(lm, prompt, seq), abs=1e-4)


def test_pruning_keeps_the_answer_and_the_probabilities(lm) -> None:
    trie = lm.label_trie()
    prompts = [lm.chat_prompt([{"role": "user", "content": t}]) for t in TEXTS]
    with lm.activate() as module:
        exact = score_labels(module, prompts, trie, lm.device, margin=None)
        pruned = score_labels(module, prompts, trie, lm.device, margin=1.0, keep=[LABELS.index("refund")])
    for e, p in zip(exact, pruned):
        assert p.best == e.best and sum(p.probs) == pytest.approx(1.0)
        assert p.exact[p.best] and p.exact[trie.labels.index("refund")]
        # pruned labels share their branch's bound: together they hold at least their exact mass,
        # so the answer's probability is only ever under-stated
        pruned_ids = [i for i, x in enumerate(p.exact) if not x]
        exact_mass = sum(math.exp(e.logprobs[i]) for i in pruned_ids)
        assert sum(math.exp(p.logprobs[i]) for i in pruned_ids) >= exact_mass - 1e-6
        assert p.probs[p.best] <= e.probs[e.best] + 1e-6
        for i in range(len(p.logprobs)):
            if p.exact[i]:
                assert p.logprobs[i] == pytest.approx(e.logprobs[i], abs=1e-4)


def test_constrained_answers_are_always_labels(lm) -> None:
    """Random prompts, greedy and sampled (hot): every answer is a label, its tokens a trie path."""
    rng = random.Random(0)
    vocab = len(lm.tokenizer)
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 30))] for _ in range(24)]
    params = [SamplingParams(temperature=0.0 if i % 3 == 0 else 2.0, seed=i) for i in range(len(prompts))]
    trie = lm.label_trie()
    for answer in classify(lm, prompts, params, reject=False):
        assert answer.label in LABELS and answer.label == answer.model_label
        assert trie.allowed(answer.token_ids) == set()  # a complete label path (raises if off the trie)
        assert answer.token_ids == list(trie.sequences[trie.labels.index(answer.label)])
        assert sum(answer.probs.values()) == pytest.approx(1.0)
        assert all(lp <= 0 for lp in answer.token_logprobs)
        events = label_events(lm, answer, 0, None)
        assert "".join(e.text for e in events) == answer.label and events[-1].finish_reason == "stop"


def test_the_reject_threshold_turns_unsure_answers_into_the_reject_label(lm) -> None:
    prompts = [lm.chat_prompt([{"role": "user", "content": t}]) for t in TEXTS]
    free = classify(lm, prompts, reject=False)
    cut = sorted(a.confidence for a in free)[len(free) // 2]  # half the answers are less sure than this
    cal = calibrate([a.model_label for a in free], [a.confidence for a in free], ["refund"] * len(free), "out_of_scope")
    strict = dataclasses.replace(lm, labels=lm.labels.with_calibration(dataclasses.replace(cal, threshold=cut)))
    for before, after in zip(free, classify(strict, prompts)):
        assert after.rejected == (before.confidence < cut) and after.threshold == cut
        assert after.label == ("out_of_scope" if before.confidence < cut else before.label)
        assert after.token_ids == list(strict.label_trie().sequences[strict.labels.labels.index(after.label)])
        assert not any(lp != lp for lp in after.token_logprobs)  # the reject label is always scored exactly


def test_build_trie_uses_the_models_tokens(lm) -> None:
    trie = build_trie(lm.tokenizer, lm.labels.labels, lm.template, lm.eos_token_ids)
    assert trie.sequences == lm.label_trie().sequences and len(trie.leaf) == len(LABELS)
