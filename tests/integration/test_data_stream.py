"""A raw-text corpus end to end, streamed: `data check` states its windows and fills the cache,
planning reads that entry (nothing tokenized again) and training batches windows from disk."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tunecraft.cli import app
from tunecraft.config import build_config
from tunecraft.data import tokenstore
from tunecraft.data.batching import packed_batches
from tunecraft.data.tokenstore import TokenView
from tunecraft.train.plan import make_plan


def _corpus(path: Path, n: int = 120) -> Path:
    rng = random.Random(0)
    words = ["river", "stone", "the", "of", "bank", "loan", "rate", "and", "a", "ledger"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            size = rng.randint(3, 10) if i % 4 else rng.randint(150, 400)  # tiny tokenizer: ~3 tokens a word,
            # so only every 4th is past 64 tokens
            fh.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(size))}) + "\n")
    return path


def test_check_then_plan_share_the_streamed_cache(tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data = _corpus(tmp_path / "corpus.jsonl")
    result = CliRunner().invoke(app, ["data", "check", str(data), "--model", str(tiny_model_dir),
                                      "--max-length", "64", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)["files"][0]["stats"]
    assert stats["split_documents"] == 30 and stats["windows"] > 60 and stats["window_overlap"] == 8

    def refuse(*_: Any) -> Any:
        raise AssertionError("planning tokenized again")

    monkeypatch.setattr(tokenstore, "tokenize_texts", refuse)  # data check's entry serves the plan
    plan = make_plan(build_config(values={
        "model.name": str(tiny_model_dir), "data.train": str(data), "data.max_length": 64,
        "train.out": str(tmp_path / "run"), "train.method": "full", "train.precision": "fp32",
        "train.batch_size": 4, "train.micro_batch_size": 2, "train.epochs": 1}))
    assert isinstance(plan.train, TokenView) and isinstance(plan.val, TokenView)
    windows = next(c for c in plan.choices if c.field == "data.window_overlap")
    assert f"into {len(plan.train) + len(plan.val) - (120 - 30)} windows" in windows.reason
    assert all(len(plan.train[i].input_ids) <= 64 for i in range(len(plan.train)))
    (batch,) = packed_batches(plan.train, [0, 1], 2)  # what a training step does with them
    assert batch.n_tokens == len(plan.train[0].input_ids) + len(plan.train[1].input_ids)
    assert plan.train_loss_tokens > 0 and plan.train_tokens == sum(len(w.input_ids) for w in plan.train)
