"""Checkpoints: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run;
SIGTERM checkpoints and exits cleanly; early stopping keeps the best step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunecraft.rundir import complete_checkpoints
from tunecraft.rundir import read_jsonl


def _cmd(model: Path, data: Path, out: Path, method: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tunecraft", "train", "--model", str(model), "--data", str(data),
        "--out", str(out), "--method", method, "--epochs", "3", "--batch-size", "4", "--lr", "3e-3",
        "train.deterministic=true", "train.micro_batch_size=2", "train.eval_every=4",
        "train.save_every=1", "train.patience=null", "train.threads=1", *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    last = complete_checkpoints(run)[-1]
    return load_file(str(last / "trainable.safetensors"))


def _kill_after_checkpoint(cmd: list[str], run: Path, min_step: int) -> None:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = complete_checkpoints(run)
        if done and int(done[-1].name.split("-")[1]) >= min_step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, chat_data, tmp_path, method) -> None:
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run(_cmd(tiny_model_dir, chat_data, straight, method), env=_env(), check=True,
                   capture_output=True)
    _kill_after_checkpoint(_cmd(tiny_model_dir, chat_data, broken, method), broken, min_step=5)
    killed_at = int(complete_checkpoints(broken)[-1].name.split("-")[1])
    res = subprocess.run(
        [sys.executable, "-m", "tunecraft", "train", "--resume", "--out", str(broken)],
        env=_env(), capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    a, b = _final_weights(straight), _final_weights(broken)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"
    steps = [r["step"] for r in read_jsonl(broken / "metrics.jsonl") if r["type"] == "train"]
    assert steps == sorted(set(steps)), "resumed run re-logged steps"
    assert steps[-1] > killed_at
    events = [e["event"] for e in read_jsonl(broken / "events.jsonl")]
    assert "resume" in events and events[-1] == "finished"


def test_sigterm_checkpoints_and_exits_cleanly(tiny_model_dir, chat_data, tmp_path) -> None:
    run = tmp_path / "run"
    cmd = _cmd(tiny_model_dir, chat_data, run, "full", "train.save_every=1000")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = read_jsonl(run / "metrics.jsonl")
        if any(r.get("type") == "train" and r["step"] >= 3 for r in rows):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 130, proc.stderr.read().decode()[-3000:] if proc.stderr else code
    done = complete_checkpoints(run)
    assert done, "no checkpoint written on SIGTERM"
    events = [e["event"] for e in read_jsonl(run / "events.jsonl")]
    assert events[-1] == "interrupted"
    res = subprocess.run([sys.executable, "-m", "tunecraft", "train", "--resume", "--out", str(run)],
                         env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert read_jsonl(run / "events.jsonl")[-1]["event"] == "finished"


def test_incomplete_checkpoint_is_never_loaded(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    (root / "step-000004").mkdir(parents=True)
    (root / "step-000004" / "COMPLETE").write_text("ok")
    (root / "step-000008").mkdir()  # no COMPLETE marker: torn write
    (root / "step-000009.tmp-123").mkdir()
    (root / "step-000004.old-123").mkdir()  # the replaced copy of a re-saved step, not yet removed
    (root / "step-000004.old-123" / "COMPLETE").write_text("ok")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-000004"]


def test_early_stopping_keeps_lowest_validation_loss(make_cfg, tmp_path) -> None:
    from runs import train_config as train

    # A high learning rate on tiny data overfits fast: validation loss turns up.
    cfg = make_cfg(**{
        "train.epochs": 30, "train.lr": 3e-2, "train.eval_every": 2, "train.save_every": 2, "train.patience": 2,
        "train.batch_size": 8, "train.warmup_ratio": 0.0, "train.schedule": "constant",
        "data.val_fraction": 0.25,
    })
    result = train(cfg)
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["type"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert result.status == "early_stopped"
    assert result.summary["best_step"] == best["step"]
    assert evals[-1]["step"] - best["step"] == 2 * 2  # stopped after `patience` bad evals
    # model/ holds the best step's weights: equal to the protected checkpoint of that step.
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    ckpt = load_file(str(tmp_path / "run" / "checkpoints" / f"step-{best['step']:06d}" / "trainable.safetensors"))
    for key, value in saved.items():
        match = [k for k in ckpt if k.endswith(key)]
        assert match, key
        torch.testing.assert_close(ckpt[match[0]], value.float())
