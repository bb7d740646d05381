"""Duplicates and train/validation leakage: exact and near-duplicate pairs, fast at scale."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from tunecraft.data import dedup
from tunecraft.data.dedup import (
    NEAR_THRESHOLD,
    duplicate_issues,
    find_duplicates,
    find_leaks,
    leak_issues,
    minhash,
    normalize,
    similar_pairs,
    word_set,
)
from tunecraft.data.schema import Example, Message


def pc(line: int, prompt: str, completion: str, path: str = "f.jsonl") -> Example:
    return Example("prompt_completion", path, line, prompt=prompt, completion=completion)


def chat(line: int, user: str, answer: str, system: str = "") -> Example:
    msgs = ((Message("system", system),) if system else ()) + (Message("user", user), Message("assistant", answer))
    return Example("chat", "f.jsonl", line, messages=msgs)


def test_normalize_ignores_case_punctuation_spacing_and_unicode_forms() -> None:
    assert normalize("  What's the FEE?!\n") == "what s the fee"
    assert normalize("ｆｕｌｌ width Ünïcode") == normalize("full WIDTH ünïcode")


def test_exact_duplicates_point_at_the_first_copy() -> None:
    examples = [pc(1, "a", "b"), pc(2, "c", "d"), pc(4, "a", "b"), pc(9, "a", "b")]
    matches = find_duplicates(examples)
    assert [(m.line, m.other_line) for m in matches] == [(4, 1), (9, 1)]
    issues = duplicate_issues(matches, "f.jsonl")
    assert [str(i) for i in issues][0].startswith("f.jsonl:4: duplicate: exact duplicate of line 1")
    assert all(i.severity == "warning" for i in issues)


def test_leaks_exact_near_and_clean() -> None:
    train = [
        pc(1, "What is the fee for sending money to another country?", "Transfers abroad cost 2 euros."),
        pc(2, "How long does a new card take to arrive?", "About five business days."),
        pc(3, "Can I change my PIN in the mobile app?", "Yes: Cards, then Reset PIN."),
    ]
    val = [
        pc(1, "How long does a new card take to arrive?", "About five business days."),
        pc(2, "what is the FEE for sending money to another country", "Transfers abroad cost 2 euros!"),
        pc(3, "Can I change my PIN in the banking app?", "Yes: Cards, then Reset PIN."),
        pc(4, "Do you offer savings accounts for children?", "Yes, from age 6."),
    ]
    found = {(m.line, m.other_line, m.kind) for m in find_leaks(train, val)}
    assert found == {(1, 2, "exact"), (2, 1, "near"), (3, 3, "near")}


def test_same_prompt_with_a_different_answer_is_a_leak() -> None:
    train = [pc(5, "How do I reset my online banking password please?", "Use the Forgot password link.")]
    val = [pc(2, "How do I reset my online banking password please", "Call us at the number on your card.")]
    (match,) = find_leaks(train, val)
    assert (match.line, match.other_line, match.kind, match.similarity) == (2, 5, "prompt", 1.0)
    (issue,) = leak_issues([match], "val.jsonl", "train.jsonl")
    assert issue.code == "leak_near" and "train.jsonl:5" in issue.message and "answers differ" in issue.message


def test_short_prompts_alone_are_not_leaks() -> None:
    train = [pc(1, "hi", "Hello! How can I help with your account today?")]
    val = [pc(1, "hi", "Good morning, what can I do for you?")]
    assert find_leaks(train, val) == []


def test_shared_system_prompt_does_not_make_everything_similar() -> None:
    system = " ".join(f"rule{i}" for i in range(200))  # long, identical in every example
    train = [chat(1, "When does my card arrive?", "In five days.", system)]
    val = [chat(1, "Can I get a refund for a late order?", "Yes, within 30 days.", system)]
    assert find_leaks(train, val) == []


def test_near_threshold_boundary() -> None:
    # 9 distinct words, one changed: Jaccard (8 / 10) = 0.8, exactly the threshold.
    words = "alpha beta gamma delta epsilon zeta eta theta iota".split()
    changed = words[:-1] + ["kappa"]
    assert NEAR_THRESHOLD == 0.8
    pairs = similar_pairs([frozenset(words)], [frozenset(changed)], NEAR_THRESHOLD)
    assert [(i, j, round(s, 3)) for i, j, s in pairs] == [(0, 0, 0.8)]
    fewer = words[:-2] + ["kappa"]  # 8 words, one changed: 7 / 9 < 0.8
    assert similar_pairs([frozenset(words[:-1])], [frozenset(fewer)], NEAR_THRESHOLD) == []


def test_similar_pairs_matches_brute_force() -> None:
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(60)]
    left = [frozenset(rng.sample(vocab, rng.randint(5, 20))) for _ in range(150)]
    right = [frozenset(rng.sample(vocab, rng.randint(5, 20))) for _ in range(60)]
    right += [frozenset(list(s)[:-1]) for s in left[:30]]  # near copies (one word dropped)
    right += [frozenset(), left[0]]  # empty sets never match; exact copies always do
    brute = sorted(
        (i, j) for i, a in enumerate(left) for j, b in enumerate(right)
        if a and b and len(a & b) / len(a | b) >= NEAR_THRESHOLD
    )
    found = [(i, j) for i, j, _ in similar_pairs(left, right, NEAR_THRESHOLD)]
    assert found == brute and len(brute) >= 31


def test_minhash_is_deterministic() -> None:
    sets = [word_set("the quick brown fox"), word_set("lorem ipsum dolor")]
    sig = minhash(sets)
    assert sig.shape == (2, 144) and sig.dtype == np.uint32
    assert (sig == minhash(sets)).all()
    # a set's signature depends on the set only: not on its neighbours, order or word order
    again = minhash([word_set("lorem ipsum dolor"), word_set("Fox brown quick the"), word_set("x")])
    assert (again[1] == sig[0]).all() and (again[0] == sig[1]).all()
    assert not (sig[0] == sig[1]).any()  # disjoint sets: no hash function agrees


def test_leak_messages_group_training_lines() -> None:
    train = [pc(n, "same question about the card limit here", "same answer") for n in (3, 8, 9)]
    val = [pc(4, "same question about the card limit here", "same answer")]
    (issue,) = leak_issues(find_leaks(train, val), "val.jsonl", "train.jsonl")
    assert str(issue).startswith("val.jsonl:4: leak_exact: identical to training example train.jsonl:3 (also lines 8, 9)")


def _random_examples(n: int, rng: random.Random, path: str) -> list[Example]:
    vocab = [f"w{i}" for i in range(3000)] + ["the", "a", "is", "of", "to", "you", "your"] * 60
    return [
        chat(i + 1, " ".join(rng.choices(vocab, k=rng.randint(5, 20))) + "?",
             " ".join(rng.choices(vocab, k=rng.randint(10, 80))), "You are a helpful bank assistant.")
        for i in range(n)
    ]


def test_leakage_of_10k_by_3k_examples_checks_only_lsh_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At scale only the LSH candidates get the exact Jaccard check, never all 30M pairs."""
    rng = random.Random(0)
    train, val = _random_examples(10_000, rng, "t"), _random_examples(3_000, rng, "v")
    val[10] = replace(train[20], path="v", line=11)
    near = train[30].messages
    val[11] = Example("chat", "v", 12, messages=(near[0], near[1], Message("assistant", near[2].content + " extra")))
    verified: list[int] = []
    exact_check = dedup._verify

    def counting_verify(
        left: Sequence[frozenset[str]], right: Sequence[frozenset[str]], pairs: np.ndarray,
        threshold: float,
    ) -> list[tuple[int, int, float]]:
        verified.append(len(pairs))
        return exact_check(left, right, pairs, threshold)

    monkeypatch.setattr(dedup, "_verify", counting_verify)
    matches = find_leaks(train, val)
    assert {(m.line, m.other_line, m.kind) for m in matches} == {(11, 21, "exact"), (12, 31, "near")}
    # one pass for whole contents, one for prompts; random texts share no band (seeded: exact)
    assert len(verified) == 2
    assert 2 <= sum(verified) <= 100, verified  # the two planted pairs, out of 3e7
