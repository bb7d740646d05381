"""Held-out raw text (eval/text.py): every token scored once, windows and all; tuned - base as a
paired per-token difference with a document-level interval; the CLI prints and records it."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from runs import build_lora_run
from tunecraft.cli import app
from tunecraft.data.loader import load_examples
from tunecraft.eval.bootstrap import bootstrap_ratio
from tunecraft.eval.heldout import tokenize_for
from tunecraft.eval.text import all_text, compare_text, document_sums
from tunecraft.serve.engine import load_target

WORDS = ["ledger", "river", "the", "of", "a", "bank", "loan", "rate", "stone", "and"]


def _docs(path: Path, sizes: list[int], seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for n in sizes:
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n))}) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_run(tmp_path_factory.mktemp("text-eval") / "run", tiny_model_dir, seed=3, scale=0.5)


def _by_hand(lm, examples) -> tuple[float, int]:
    """Summed cross-entropy of every scored target: one plain forward per document, no windows."""
    total, count = 0.0, 0
    whole = tokenize_for(dataclasses.replace(lm, context_length=10**6), examples)  # no document split
    with lm.activate() as module, torch.inference_mode():
        for tok in whole:
            ids = torch.tensor([tok.input_ids])
            labels = torch.tensor(tok.labels[1:])
            logits = module(input_ids=ids).logits[0, :-1].float()
            keep = labels != -100
            total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
    return total, count


def test_short_documents_score_as_one_forward_each(run: Path, tmp_path: Path) -> None:
    data = _docs(tmp_path / "docs.jsonl", [5, 12, 30, 8])
    assert all_text(load_examples(data))
    lm = load_target(str(run))
    metrics, sums = document_sums(lm, load_examples(data), batch_size=3)
    total, count = _by_hand(lm, load_examples(data))
    assert metrics["documents"] == 4 == len(sums) and metrics["tokens"] == count == sum(n for _, n in sums)
    assert metrics["loss"] == pytest.approx(total / count, abs=1e-4)
    assert sum(s for s, _ in sums) == pytest.approx(total, rel=1e-4)


def test_a_long_document_is_scored_as_windows_each_token_once(run: Path, tmp_path: Path) -> None:
    data = _docs(tmp_path / "long.jsonl", [400, 6])
    lm = load_target(str(run))
    short = dataclasses.replace(lm, context_length=64)  # ~3 tokens a word: the first is many windows
    metrics, sums = document_sums(short, load_examples(data), batch_size=4)
    whole, whole_sums = document_sums(dataclasses.replace(lm, context_length=10**6), load_examples(data), 4)
    assert metrics["windows"] > 10 and whole["windows"] == 2 and metrics["documents"] == 2
    assert [n for _, n in sums] == [n for _, n in whole_sums]  # the same targets, each scored once
    assert metrics["loss"] > whole["loss"] - 0.5  # shorter context, similar (not identical) loss


def test_tuned_minus_base_is_paired_by_document(run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _docs(tmp_path / "docs.jsonl", [10, 40, 3, 25, 18, 7], seed=1)
    tuned, base = load_target(str(run)), load_target(str(tiny_model_dir))
    systems, diff = compare_text(tuned, base, load_examples(data), batch_size=4, resamples=200, seed=0)
    assert diff is not None and diff["comparable"]
    expected = systems["tuned"]["loss"] - systems["base"]["loss"]
    assert diff["loss_diff"]["mean"] == pytest.approx(expected, abs=1e-6)
    assert diff["loss_diff"]["low"] <= diff["loss_diff"]["mean"] <= diff["loss_diff"]["high"]
    assert diff["better"] == (diff["loss_diff"]["high"] < 0)
    _, itself = compare_text(base, base, load_examples(data), batch_size=4, resamples=200, seed=0)
    assert itself is not None and itself["loss_diff"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert not itself["better"] and not itself["worse"]


def test_bootstrap_ratio_by_hand() -> None:
    got = bootstrap_ratio([1.0, 2.0, 3.0], [1, 1, 2], resamples=500, seed=0)
    assert got.mean == pytest.approx(6 / 4)
    assert got.low < got.mean < got.high and got.low >= 1.0 and got.high <= 2.0  # unit ratios 1, 2, 1.5
    flat = bootstrap_ratio([2.0, 4.0, 6.0], [1, 2, 3], resamples=100, seed=0)  # every unit's ratio is 2
    assert (flat.low, flat.mean, flat.high) == pytest.approx((2.0, 2.0, 2.0))


def test_the_cli_evaluates_a_raw_text_file(run: Path, tmp_path: Path) -> None:
    data = _docs(tmp_path / "heldout.jsonl", [8, 20, 14])
    result = CliRunner().invoke(app, ["eval", str(run), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "Held-out text: 3 documents" in result.output and "nats/token" in result.output
    saved = json.loads((run / "eval.json").read_text())
    assert saved["kind"] == "text" and set(saved["systems"]) == {"base", "tuned"}
    assert saved["general"] is not None and saved["ship"]["ship"] == saved["comparison"]["better"]
