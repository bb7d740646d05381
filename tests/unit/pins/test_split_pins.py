"""Pins the seeded, content-keyed train/validation split (`tunecraft.data.split`).

Contract: rows are ranked by sha256(f"{seed}|{content}"); the lowest round(fraction * n) rows
(at least 1, at most n - 1, for n >= 2) validate, extended so that identical contents never
straddle the split; the result does not depend on row order. Also pins the exact validation
rows for fixed inputs, and that `prepare` splits by each example's content.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from tiny import write_chat_data

from tunecraft.data.prepare import prepare
from tunecraft.data.split import split_indices

KEYS_10 = [f"row {i}" for i in range(10)]


def _by_hash(keys: list[str], seed: int, n_val: int) -> list[int]:
    """Independent re-statement of the ranking (distinct keys only)."""
    rank = {i: hashlib.sha256(f"{seed}|{k}".encode()).hexdigest() for i, k in enumerate(keys)}
    return sorted(sorted(range(len(keys)), key=rank.__getitem__)[:n_val])


def test_literal_validation_indices() -> None:
    assert split_indices(KEYS_10, 0.2, 0) == ([0, 1, 2, 3, 4, 5, 8, 9], [6, 7])
    assert split_indices(KEYS_10, 0.2, 1) == ([1, 2, 3, 4, 5, 6, 8, 9], [0, 7])
    assert split_indices(KEYS_10, 0.2, 7)[1] == [1, 8]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_validation_rows_are_the_lowest_seeded_hashes(seed: int) -> None:
    keys = [f"message number {i}" for i in range(40)]
    train, val = split_indices(keys, 0.25, seed)
    assert val == _by_hash(keys, seed, 10)
    assert train == [i for i in range(40) if i not in set(val)]


def test_same_seed_same_split_and_other_seed_other_split() -> None:
    keys = [f"example {i}" for i in range(50)]
    first = split_indices(keys, 0.2, 5)
    assert split_indices(list(keys), 0.2, 5) == first
    others = {tuple(split_indices(keys, 0.2, s)[1]) for s in range(6, 11)}
    assert tuple(first[1]) not in others
    assert len(others) == 5  # each seed gives its own split


@pytest.mark.parametrize(
    "n,fraction,n_val",
    [
        (2, 0.1, 1),  # at least one validation row
        (3, 0.5, 2),  # round(1.5) = 2
        (5, 0.5, 2),  # round(2.5) = 2: Python rounds half to even
        (10, 0.1, 1),
        (10, 0.25, 2),  # round(2.5) = 2
        (10, 0.5, 5),
        (10, 0.99, 9),  # at most n - 1: training keeps a row
        (25, 0.5, 12),  # round(12.5) = 12
        (25, 0.25, 6),
        (100, 0.1, 10),
        (100, 0.0, 1),  # a zero fraction still validates on one row
    ],
)
def test_fraction_gives_exact_counts(n: int, fraction: float, n_val: int) -> None:
    train, val = split_indices([f"r{i}" for i in range(n)], fraction, 0)
    assert len(val) == n_val
    assert len(train) == n - n_val
    assert sorted(train + val) == list(range(n))  # a partition
    assert val == sorted(val) and train == sorted(train)


def test_tiny_inputs_have_no_validation() -> None:
    assert split_indices([], 0.5, 0) == ([], [])
    assert split_indices(["only"], 0.5, 0) == ([0], [])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reordering_rows_keeps_the_same_contents_in_validation(seed: int) -> None:
    verbs = ["pay", "save", "send", "close"] * 6
    keys = [f"question {i}: how do I {w}?" for i, w in enumerate(verbs)]
    _, val = split_indices(keys, 0.3, seed)
    expected = {keys[i] for i in val}
    rng = random.Random(seed)
    for _ in range(3):
        shuffled = keys[:]
        rng.shuffle(shuffled)
        _, val2 = split_indices(shuffled, 0.3, seed)
        assert {shuffled[i] for i in val2} == expected


def test_identical_rows_land_on_the_same_side() -> None:
    keys = ["a", "b", "a", "c", "d", "a", "e", "f"]
    # n_val = 2, but the cut took "a": every copy of "a" follows it into validation.
    assert split_indices(keys, 0.25, 0) == ([1, 4, 6, 7], [0, 2, 3, 5])
    assert split_indices(keys, 0.25, 1) == ([0, 2, 3, 5, 6, 7], [1, 4])
    for seed in range(20):
        train, val = split_indices(keys, 0.25, seed)
        assert not {keys[i] for i in train} & {keys[i] for i in val}, seed


def test_all_identical_rows_fall_back_to_a_plain_cut() -> None:
    assert split_indices(["x"] * 5, 0.4, 0) == ([2, 3, 4], [0, 1])


def test_prepare_splits_by_content_and_records_lines(tmp_path: Path, tiny_tokenizer: Any) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 10)
    prepared = prepare(data, None, tiny_tokenizer, None, "auto", None, 0.2, 0)
    assert prepared.split == {
        "kind": "split", "source": str(data), "seed": 0, "fraction": 0.2,
        "train_lines": [1, 2, 4, 5, 6, 7, 9, 10], "val_lines": [3, 8],
    }
    assert [e.line for e in prepared.val_examples] == [3, 8]
    assert [t.line for t in prepared.val] == [3, 8] and len(prepared.train) == 8
    val_users = [e.messages[0].content for e in prepared.val_examples]
    assert val_users == [
        "good morning, about my balance (ticket 2)", "hello, about my transfer (ticket 7)",
    ]

    # The same rows in reverse order: the same conversations validate (at their new lines).
    rows = data.read_text(encoding="utf-8").splitlines()
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("\n".join(reversed(rows)) + "\n", encoding="utf-8")
    again = prepare(reversed_file, None, tiny_tokenizer, None, "auto", None, 0.2, 0)
    assert again.split["val_lines"] == [3, 8]  # lines 11 - 8 and 11 - 3
    assert sorted(e.messages[0].content for e in again.val_examples) == sorted(val_users)
    assert json.loads(rows[2])["messages"][0]["content"] == val_users[0]
