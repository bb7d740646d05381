"""The real CLI end to end on a tiny model: the run directory holds what DESIGN.md promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from tiny import write_chat_data
from tunecraft.config import load_config
from tunecraft.rundir import read_jsonl

TRAIN_FIELDS = {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}
SUMMARY_FIELDS = {
    "status", "method", "base_model", "train_examples", "train_tokens", "wall_s", "tokens_per_s",
    "best_step", "best_val_loss", "final_train_loss",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunecraft", *args], capture_output=True, text=True)


def test_train_lora_cli_writes_a_complete_run_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 48)
    val = write_chat_data(tmp_path / "val.jsonl", 8, seed=1)
    run = tmp_path / "run"
    res = _run("train", "--model", str(tiny_model_dir), "--data", str(data), "--val", str(val),
               "--method", "lora", "--epochs", "2", "--lr", "5e-3", "--out", str(run), "lora.r=4")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "auto settings" in res.stdout and "finished" in res.stdout

    cfg = load_config(run / "config.yaml")
    assert cfg.train.method == "lora" and cfg.lora.r == 4 and cfg.train.batch_size is not None

    metrics = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in metrics if r["type"] == "train"]
    eval_rows = [r for r in metrics if r["type"] == "eval"]
    assert train_rows and all(TRAIN_FIELDS <= r.keys() for r in train_rows)
    assert [r["step"] for r in train_rows] == list(range(1, len(train_rows) + 1))
    assert all({"step", "val_loss", "val_token_accuracy"} <= r.keys() for r in eval_rows)
    assert train_rows[-1]["tokens"] > train_rows[0]["tokens"]

    events = [e["event"] for e in read_jsonl(run / "events.jsonl")]
    assert events[0] == "started" and "checkpoint" in events and events[-1] == "finished"

    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_FIELDS <= summary.keys()
    assert summary["status"] == "finished" and summary["method"] == "lora"
    assert summary["best_val_loss"] == min(r["val_loss"] for r in eval_rows)

    model_dir = run / "model"
    assert (model_dir / "adapter_config.json").is_file()
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    assert (model_dir / "chat_template.jinja").is_file() or "chat_template" in (
        model_dir / "tokenizer_config.json"
    ).read_text()
    assert not list(run.rglob("*.bin")) and not list(run.rglob("*.pt"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tuned = PeftModel.from_pretrained(base, str(model_dir))
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        tuned_logits = tuned(input_ids=ids).logits
        with tuned.disable_adapter():
            base_logits = tuned(input_ids=ids).logits
    assert not torch.allclose(tuned_logits, base_logits)


def test_train_refuses_to_overwrite_and_reports_bad_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    res = _run("train", "--model", str(tiny_model_dir), "--data", str(bad), "--out", str(tmp_path / "r"))
    assert res.returncode != 0
    assert f"{bad}:1:" in res.stderr and f"{bad}:2:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "config.yaml").exists()  # nothing written before validation


def test_dry_run_prints_plan_and_estimate(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 40)
    res = _run("train", "--model", str(tiny_model_dir), "--data", str(data), "--dry-run",
               "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    for word in ("training plan", "optimizer steps", "estimate", "method"):
        assert word in res.stdout
    assert not (tmp_path / "r").exists()


def test_dry_run_json_is_one_object_with_the_auto_reasons_and_the_estimate(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 40)
    res = _run("train", "--model", str(tiny_model_dir), "--data", str(data), "--dry-run", "--json",
               "--out", str(tmp_path / "r"), "train.lr=2e-3")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)  # stdout is the JSON alone
    assert plan["lr"] == 2e-3 and plan["total_steps"] >= 1 and plan["step_s"] > 0
    assert plan["estimated_s"] == plan["step_s"] * plan["total_steps"]
    chosen = {c["field"]: c for c in plan["choices"]}
    assert "train.lr" not in chosen and chosen["train.method"]["reason"]  # given values are not auto
    assert not (tmp_path / "r").exists()
    refused = _run("train", "--model", str(tiny_model_dir), "--data", str(data), "--json")
    assert refused.returncode != 0 and "--dry-run" in refused.stdout + refused.stderr
