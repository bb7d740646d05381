"""The example dataset: generated deterministically, well-formed, balanced and leak-free.

The checks here are written independently of the generator's own assertions (normalization and
near-duplicate search are re-implemented) so that a bug in one is caught by the other.
"""

from __future__ import annotations

import collections
import difflib
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tunecraft.config import build_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SUPPORT = EXAMPLES / "support"
FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "train_pc.jsonl", "docs.jsonl", "README.md")
SPLITS = ("train", "val", "test")


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_generator()


@pytest.fixture(scope="module")
def fresh(gen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("support")
    gen.main(["--out", str(out)])
    return out


def _rows(name: str) -> list[dict]:
    with (SUPPORT / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _key(text: str) -> str:
    # Case, punctuation and digits do not make a message different.
    return " ".join(re.sub(r"[^a-z0-9]+", " ", re.sub(r"\d", "9", text.lower())).split())


@pytest.mark.parametrize("name", FILES)
def test_committed_files_match_a_fresh_run(fresh: Path, name: str) -> None:
    assert (fresh / name).read_bytes() == (SUPPORT / name).read_bytes(), (
        f"examples/support/{name} is stale: run `python examples/make_examples.py`"
    )


def test_sizes() -> None:
    sizes = {s: len(_rows(f"{s}.jsonl")) for s in SPLITS}
    assert sizes["train"] >= 400
    assert 50 <= sizes["val"] <= 80
    assert sizes["test"] >= 100
    assert 40 <= len(_rows("train_pc.jsonl")) <= 60
    assert 25 <= len(_rows("docs.jsonl")) <= 40


@pytest.mark.parametrize("split", SPLITS)
def test_rows_are_chat_with_a_house_json_answer(gen: ModuleType, split: str) -> None:
    for i, row in enumerate(_rows(f"{split}.jsonl"), 1):
        assert set(row) == {"messages"}, f"{split}:{i}"
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"], f"{split}:{i}: {roles}"
        user, answer = (m["content"] for m in row["messages"])
        assert user.strip() and "{" not in user, f"{split}:{i}: unfilled template: {user!r}"
        assert "\n" not in answer
        parsed = json.loads(answer)
        assert list(parsed) == ["intent", "priority", "reply"], f"{split}:{i}"
        assert parsed["intent"] in gen.LABELS
        assert parsed["priority"] in gen.PRIORITIES
        assert parsed["reply"].endswith(".") and len(parsed["reply"]) < 120


def test_every_label_in_every_split_and_balanced(gen: ModuleType) -> None:
    for split in SPLITS:
        counts = collections.Counter(json.loads(r["messages"][1]["content"])["intent"] for r in _rows(f"{split}.jsonl"))
        assert set(counts) == set(gen.LABELS), split
        assert max(counts.values()) == min(counts.values()), f"{split} unbalanced: {counts}"


def test_priority_and_reply_follow_the_intent(gen: ModuleType) -> None:
    """Same intent -> same priority; the reply's slot value occurs in the user message."""
    by_name = {i.name: i for i in gen.INTENTS}
    for split in SPLITS:
        for row in _rows(f"{split}.jsonl"):
            user, answer = (m["content"] for m in row["messages"])
            parsed = json.loads(answer)
            intent = by_name[parsed["intent"]]
            assert parsed["priority"] == intent.priority
            # The reply is the house template with its slots filled: match it as a pattern.
            pattern = re.escape(intent.reply).replace(r"\{", "{").replace(r"\}", "}")
            pattern = re.sub(r"\{([a-z]+)\}", r"(?P<\1>.+?)", pattern)
            match = re.fullmatch(pattern, parsed["reply"], flags=re.IGNORECASE)
            assert match, parsed["reply"]
            for slot, value in match.groupdict().items():
                if slot == "amount":
                    assert value.lstrip("$") in user, (value, user)
                elif value != "card":  # "card" alone: the customer named no card type
                    assert value.removesuffix(" card") in user, (value, user)


def test_no_duplicates_and_no_leakage_between_splits() -> None:
    keys = {s: [_key(r["messages"][0]["content"]) for r in _rows(f"{s}.jsonl")] for s in SPLITS}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks), f"duplicate user messages in {split}"
    assert not set(keys["train"]) & (set(keys["val"]) | set(keys["test"]))
    assert not set(keys["val"]) & set(keys["test"])
    # Near duplicates: every held-out message against every training message, all intents.
    for held in ("val", "test"):
        for a in keys[held]:
            for b in keys["train"]:
                m = difflib.SequenceMatcher(None, a, b, autojunk=False)
                if m.real_quick_ratio() >= 0.9 and m.quick_ratio() >= 0.9:
                    assert m.ratio() < 0.9, f"near-duplicate across splits:\n  {a}\n  {b}"


def test_prompt_completion_rows_come_from_train_only() -> None:
    train = {(r["messages"][0]["content"], r["messages"][1]["content"]) for r in _rows("train.jsonl")}
    for row in _rows("train_pc.jsonl"):
        assert set(row) == {"prompt", "completion"}
        assert (row["prompt"], row["completion"]) in train


def test_docs_are_raw_text() -> None:
    texts = [r["text"] for r in _rows("docs.jsonl")]
    assert all(set(r) == {"text"} for r in _rows("docs.jsonl"))
    assert len(set(texts)) == len(texts) and all(len(t) > 80 for t in texts)


def test_other_seed_gives_other_data(gen: ModuleType, tmp_path: Path) -> None:
    gen.main(["--out", str(tmp_path), "--seed", "1"])
    assert (tmp_path / "train.jsonl").read_bytes() != (SUPPORT / "train.jsonl").read_bytes()


@pytest.mark.parametrize("name,method", [("demo.yaml", "lora"), ("full.yaml", "full")])
def test_configs_load_and_point_at_the_data(name: str, method: str) -> None:
    path = EXAMPLES / "configs" / name
    cfg = build_config(path)
    assert cfg.train.method == method
    root = EXAMPLES.parent
    assert (root / cfg.data.train).is_file() and (root / cfg.data.val).is_file()
    assert yaml.safe_load(path.read_text())["model"]["name"] == cfg.model.name
