"""Preference tuning through the real CLI: data check/show, train --method dpo, eval, export, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import write_preference_data
from tunecraft.rundir import complete_checkpoints, read_jsonl

DPO_TRAIN = {"dpo_loss", "preference_accuracy", "reward_margin", "reward_chosen", "reward_rejected",
             "logp_chosen", "logp_rejected"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunecraft", *args], capture_output=True, text=True,
                          env=env or {**os.environ, "COLUMNS": "200"})


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return (write_preference_data(tmp_path / "train.jsonl", 40),
            write_preference_data(tmp_path / "val.jsonl", 8, seed=1, layout="openai"),
            write_preference_data(tmp_path / "test.jsonl", 12, seed=2))


def test_dpo_run_end_to_end(tiny_model_dir: Path, tmp_path: Path, pairs) -> None:
    train, val, test = pairs
    check = _run("data", "check", str(train), "--val", str(val), "--model", str(tiny_model_dir), "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert [f["format"] for f in report["files"]] == ["preference", "preference"]
    shown = _run("data", "show", str(val), "--model", str(tiny_model_dir), "-n", "1")
    assert shown.returncode == 0 and "· chosen" in shown.stdout and "· rejected" in shown.stdout

    run = tmp_path / "run"
    res = _run("train", "--model", str(tiny_model_dir), "--data", str(train), "--val", str(val),
               "--method", "dpo", "train.method=lora", "lora.r=4", "--epochs", "2", "--lr", "5e-3",
               "--batch-size", "8", "train.dpo.beta=0.2", "train.patience=null", "--out", str(run))
    assert res.returncode == 0, res.stderr + res.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["method"], summary["objective"]) == ("finished", "lora", "dpo")
    assert summary["verdict"]["status"] in ("healthy", "underfitting", "overfitting", "memorizing")
    assert summary["startup_s"]["reference_logps_s"] > 0
    metrics = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in metrics if r["type"] == "train"]
    evals = [r for r in metrics if r["type"] == "eval"]
    assert all(DPO_TRAIN <= r.keys() for r in train_rows)
    assert train_rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1
    assert train_rows[-1]["reward_margin"] != 0
    assert all({"val_loss", "val_preference_accuracy", "val_reward_margin"} <= r.keys() for r in evals)
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals)

    evaluated = _run("eval", str(run), "--data", str(test), "--json")
    assert evaluated.returncode == 0, evaluated.stderr + evaluated.stdout
    payload = json.loads(evaluated.stdout)
    assert payload["kind"] == "preference" and payload["examples"] == 12 and payload["beta"] == 0.2
    tuned, base = payload["systems"]["tuned"], payload["systems"]["base"]
    assert 0 <= tuned["preference_accuracy"] <= 1 and "preference_accuracy" not in base
    assert json.loads((run / "eval.json").read_text())["systems"] == payload["systems"]
    table = _run("eval", str(run), "--data", str(test))
    assert table.returncode == 0 and "preference accuracy" in table.stdout

    merged = _run("export", str(run), "--format", "merged", "--out", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr + merged.stdout
    assert (tmp_path / "merged" / "config.json").is_file()


def _cmd(model: Path, train: Path, val: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tunecraft", "train", "--model", str(model), "--data", str(train),
            "--val", str(val), "--out", str(out), "--method", "dpo", "train.method=full", "--epochs", "2",
            "--batch-size", "4", "--lr", "1e-3", "train.deterministic=true", "train.micro_batch_size=2",
            "train.eval_every=5", "train.save_every=1", "train.patience=null", "train.threads=1"]


def test_dpo_full_weights_killed_and_resumed_is_bit_identical(tiny_model_dir: Path, tmp_path: Path, pairs) -> None:
    """The reference of a resumed full-weights run is the base model, not the checkpoint: with the
    cached reference log-probs deleted, the resumed run recomputes them before restoring."""
    train, val, _ = pairs
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    env = lambda home: {**os.environ, "TUNECRAFT_HOME": str(home), "PYTHONUNBUFFERED": "1"}  # noqa: E731
    subprocess.run(_cmd(tiny_model_dir, train, val, straight), env=env(home_a), check=True, capture_output=True)
    proc = subprocess.Popen(_cmd(tiny_model_dir, train, val, broken), env=env(home_b),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = complete_checkpoints(broken)
        if done and int(done[-1].name.split("-")[1]) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    cached = list(home_b.rglob("ref-logps-*.safetensors"))
    assert len(cached) == 2  # train and val
    for path in cached:
        path.unlink()
    res = subprocess.run([sys.executable, "-m", "tunecraft", "train", "--resume", "--out", str(broken)],
                         env=env(home_b), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a = load_file(str(complete_checkpoints(straight)[-1] / "trainable.safetensors"))
    b = load_file(str(complete_checkpoints(broken)[-1] / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda run: [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]  # noqa: E731
    assert losses(straight) == losses(broken)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist_args(model: Path, train: Path, val: Path, out: Path, method: str, sharding: str) -> list[str]:
    return [sys.executable, "-m", "tunecraft", "train", "--model", str(model), "--data", str(train), "--val", str(val),
            "--out", str(out), "--method", "dpo", f"train.method={method}", "--epochs", "1", "--batch-size", "8",
            "--lr", "3e-3", "--sharding", sharding, "train.deterministic=true", "train.micro_batch_size=2",
            "train.eval_every=2", "train.patience=null", "train.threads=1", "lora.r=4"]


@pytest.mark.parametrize(("method", "sharding"), [("lora", "ddp"), pytest.param("full", "fsdp", marks=pytest.mark.slow)])
def test_two_processes_dpo_like_one(tiny_model_dir: Path, tmp_path: Path, pairs, method: str, sharding: str) -> None:
    """Each rank scores its share of the reference pass and of every step; the pairs and the
    chosen tokens are counted over both ranks, so two processes train like one."""
    train, val, _ = pairs
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNECRAFT_DIST_TIMEOUT_S": "120"}
    one, two = tmp_path / "one", tmp_path / "two"
    for out, extra in ((one, []), (two, ["--nproc-per-node", "2", "--master-port", str(_free_port())])):
        res = subprocess.run([*_dist_args(tiny_model_dir, train, val, out, method, sharding), *extra], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [[r for r in read_jsonl(run / "metrics.jsonl") if r["type"] in ("train", "eval")] for run in (one, two)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] and len(rows[0]) > 4
    for a, b in zip(*rows):
        for key in ("loss", "preference_accuracy", "reward_margin", "val_loss", "val_preference_accuracy"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    a = load_file(str(complete_checkpoints(one)[-1] / "trainable.safetensors"))
    b = load_file(str(complete_checkpoints(two)[-1] / "trainable.safetensors"))
    # AdamW moves each weight by ~lr (3e-3) a step whatever the gradient's size, so float noise
    # between the layouts shows at ~1e-5 (2e-5 seen on an AVX-512 EPYC): under 1% of one step.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
