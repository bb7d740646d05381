"""Real tiny runs: the overfitting verdict on real curves, and `tunecraft eval` end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tiny import write_chat_data
from tunecraft.config import build_config
from tunecraft.eval.report import SECTIONS
from runs import train_config as train
from tunecraft.rundir import read_jsonl

BASE = {
    "train.precision": "fp32", "train.method": "full", "train.batch_size": 8,
    "train.micro_batch_size": 8,
}


def _noise_data(path: Path, n: int, seed: int) -> Path:
    """Answers with random codes: learnable format, unlearnable content (memorizing it overfits)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            answer = json.dumps({"intent": rng.choice(["refund", "balance", "transfer"]),
                                 "code": rng.randrange(1000, 9999)})
            user = f"hello ticket {rng.randrange(100)}"
            fh.write(json.dumps({"messages": [{"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}]}) + "\n")
    return path


def _evals(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "eval"]


@pytest.fixture(scope="module")
def normal_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("normal")
    cfg = build_config(values={
        **BASE, "model.name": str(tiny_model_dir), "train.out": str(root / "run"),
        "data.train": str(write_chat_data(root / "train.jsonl", 64)),
        "data.val": str(write_chat_data(root / "val.jsonl", 16, seed=7)),
        "train.lr": 1e-2, "train.epochs": 3, "train.eval_every": 2, "train.save_every": 12,
    })
    train(cfg)
    return root / "run"


def test_deliberately_overfit_run_is_called_overfitting_at_the_turn(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = build_config(values={
        **BASE, "model.name": str(tiny_model_dir), "train.out": str(tmp_path / "run"),
        "data.train": str(_noise_data(tmp_path / "t.jsonl", 8, 1)),
        "data.val": str(_noise_data(tmp_path / "v.jsonl", 8, 2)),
        "train.lr": 3e-2, "train.epochs": 40, "train.eval_every": 4, "train.save_every": 40,
        "train.schedule": "constant", "train.warmup_ratio": 0,
    })
    summary = train(cfg).summary
    verdict = summary["verdict"]
    assert verdict["status"] in ("overfitting", "memorizing"), verdict["message"]
    evals = _evals(tmp_path / "run")
    turn = min(evals, key=lambda e: e[1])[0]
    assert verdict["onset_step"] == turn == summary["best_step"]
    assert evals[-1][1] > 1.05 * min(v for _, v in evals)  # it really did turn
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["verdict"]["onset_step"] == turn


def test_normal_run_is_healthy(normal_run: Path) -> None:
    verdict = json.loads((normal_run / "summary.json").read_text())["verdict"]
    assert verdict["status"] == "healthy", verdict["message"]
    assert verdict["onset_step"] is None and verdict["recommended"]["step"] == verdict["best_step"]


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.plots = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.ids.append(a.get("id") or "")
        if tag == "img" and (a.get("src") or "").startswith("data:image/png;base64,"):
            self.plots += 1


def test_eval_cli_writes_eval_json_and_report(normal_run: Path, tmp_path: Path) -> None:
    test = write_chat_data(tmp_path / "test.jsonl", 12, seed=11)
    step = min(p.name for p in (normal_run / "checkpoints").iterdir())
    res = subprocess.run(
        [sys.executable, "-m", "tunecraft", "eval", str(normal_run), "--data", str(test), "--limit", "6",
         "--max-new-tokens", "8", "--batch-size", "4", "--few-shot", "2", "--checkpoint", step],
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert "ship" in res.stdout and "tuned" in res.stdout
    payload = json.loads((normal_run / "eval.json").read_text())
    assert list(payload["systems"]) == ["base", "prompted", "tuned", step]
    assert payload["examples"] == 6 and payload["main_metric"] == "accuracy"
    assert payload["answer_kind"]["label_field"] == "intent"
    for system in payload["systems"].values():
        assert system["loss"] > 0 and system["perplexity"] > 1
        assert system["main"]["low"] <= system["main"]["mean"] <= system["main"]["high"]
    # few-shot rows come from the training file, never the test file
    assert all(w.startswith(str(normal_run.parent / "train.jsonl")) for w in payload["prompt"]["few_shot"])
    assert payload["verdict"]["status"] == "healthy" and payload["ship"]["line"]
    parser = _Sections()
    parser.feed((normal_run / "report" / "index.html").read_text())
    assert parser.ids == list(SECTIONS) and parser.plots == 2
