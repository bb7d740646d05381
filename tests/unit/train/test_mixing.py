"""Several training files mixed by weight: the stated shares of an epoch, each file's own errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from runs import train_config
from tiny import write_chat_data
from tunecraft.data.prepare import draw, mix_counts
from tunecraft.errors import DataError
from tunecraft.train.plan import make_plan


def test_mix_counts_keep_the_epoch_size_and_share_it_by_weight() -> None:
    assert mix_counts([700, 800], [2, 1]) == [1000, 500]
    assert sum(mix_counts([10, 11, 12], [1, 1, 1])) == 33
    assert mix_counts([3, 3], [1, 2]) == [2, 4]


def test_draw_shows_whole_passes_before_repeating() -> None:
    up = draw(10, 25, seed=0)
    counts = Counter(up)
    assert len(up) == 25 and set(counts.values()) == {2, 3} and sorted(up[:10]) == list(range(10))
    down = draw(10, 4, seed=0)
    assert len(set(down)) == 4  # a down-weighted file: a subset without repeats
    assert draw(10, 4, seed=0) == down and draw(10, 4, seed=1) != down  # seeded


def _file(path: Path, n: int, tag: str) -> Path:
    write_chat_data(path, n, seed=len(tag))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:  # mark each file's rows so the draw can be counted per file
        row["messages"][0]["content"] = f"[{tag}] " + row["messages"][0]["content"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_two_files_mixed_by_weight_train_in_the_stated_shares(make_cfg, tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.jsonl", 40, "a"), _file(tmp_path / "b.jsonl", 40, "b")
    cfg = make_cfg(**{"data.train": [{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}],
                      "train.max_steps": 2})
    plan = make_plan(cfg)
    tags = Counter(e.messages[0].content[:3] for e in plan.data.train_examples)
    n = len(plan.train)
    assert n == sum(s["train_examples"] for s in plan.data.split["sources"])  # the epoch keeps its size
    assert tags["[a]"] == round(0.75 * n) and tags["[b]"] == n - round(0.75 * n)
    assert {e.path for e in plan.data.val_examples} == {str(a), str(b)}  # each file holds out its share
    (mix,) = [c for c in plan.choices if c.field == "data.train"]
    assert "a.jsonl" in mix.reason and "weight 3" in mix.reason
    assert set(plan.data.digests) == {"train", "train2"}
    result = train_config(cfg)
    assert result.summary["status"] == "finished"
    split = json.loads((tmp_path / "run" / "data" / "split.json").read_text(encoding="utf-8"))
    assert [s["weight"] for s in split["sources"]] == [3, 1] and set(split["sha256"]) == {"train", "train2"}


def test_each_file_reports_its_own_errors(make_cfg, tmp_path: Path) -> None:
    good = _file(tmp_path / "good.jsonl", 20, "g")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{"oops"\n', encoding="utf-8")
    worse = tmp_path / "worse.jsonl"
    worse.write_text('{"text": 5}\n', encoding="utf-8")
    cfg = make_cfg(**{"data.train": [str(good), str(bad), {"path": str(worse), "weight": 2}]})
    with pytest.raises(DataError) as err:
        make_plan(cfg)
    text = str(err.value)
    assert f"{bad}:1:" in text and f"{bad}:2:" in text and f"{worse}:1:" in text and str(good) + ":" not in text
