"""Training under torchrun on CPU (gloo), against one process with the same global batch.

- 2 processes give the same per-step losses (within 1e-5, fp32 deterministic mode) and the
  same final weights as 1 process, for LoRA and full fine-tuning, ddp and fsdp;
- a 2-process run killed with SIGKILL mid-way resumes and finishes (and still matches);
- SIGTERM stops every rank at the same step, rank 0 checkpoints, and the run resumes;
- an error on one rank ends the whole run with that error, promptly (no rank hangs).

The data are chosen so that ranks' shares are uneven: 33 training examples in steps of 8
leave a last step of 1 example (rank 1 has nothing to do), and 5 validation examples.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tiny import write_chat_data
from tunecraft.rundir import complete_checkpoints
from tunecraft.rundir import read_jsonl

HERE = Path(__file__).parent
LOSS_TOL = 1e-5  # per-step loss, fp32: ranks only regroup the same sums
WEIGHT_TOL = 1e-5  # final weights after 10 AdamW steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TUNECRAFT_DIST_TIMEOUT_S": "120"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dist-data")
    return write_chat_data(root / "train.jsonl", 33), write_chat_data(root / "val.jsonl", 5, seed=1)


def _args(model: Path, data: tuple[Path, Path], out: Path, method: str, sharding: str = "ddp") -> list[str]:
    return [
        "train", "--model", str(model), "--data", str(data[0]), "--val", str(data[1]), "--out", str(out),
        "--method", method, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--sharding", sharding,
        "train.deterministic=true", "train.micro_batch_size=2", "train.eval_every=5", "train.save_every=1",
        "train.patience=null", "train.threads=1", "lora.r=4", "lora.alpha=32",
    ]


def _two(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "tunecraft", *args, "--nproc-per-node", "2", "--master-port", str(_free_port())]


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _run_in_process(args: list[str]) -> None:
    """The single-process reference, run by the CLI in this process (saves a startup)."""
    from typer.testing import CliRunner

    from tunecraft.cli import app

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        res = CliRunner().invoke(app, args)
    finally:  # the run set them for itself: leave other tests the session's settings
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert res.exit_code == 0, res.output[-3000:]


class Runs:
    """Runs by (method, processes, sharding), each trained once per module."""

    def __init__(self, root: Path, model: Path, data: tuple[Path, Path]) -> None:
        self.root, self.model, self.data = root, model, data
        self.done: dict[tuple[str, int, str], Path] = {}

    def get(self, method: str, procs: int, sharding: str = "ddp") -> Path:
        key = (method, procs, sharding)
        if key not in self.done:
            out = self.root / f"{method}-{procs}-{sharding}"
            args = _args(self.model, self.data, out, method, sharding)
            _run_in_process(args) if procs == 1 else _run(_two(args))
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data: tuple[Path, Path]) -> Runs:
    return Runs(tmp_path_factory.mktemp("dist-runs"), tiny_model_dir, data)


def _train_rows(run: Path) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]


def _final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(complete_checkpoints(run)[-1] / "trainable.safetensors"))


def _max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _assert_same_run(single: Path, multi: Path) -> None:
    one, two = _train_rows(single), _train_rows(multi)
    # Rank 0 alone logs: every step exactly once.
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 11))
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < LOSS_TOL, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
        assert a["tokens"] == b["tokens"]  # loss-bearing tokens counted over all ranks
    evals = zip(*(([r for r in read_jsonl(run / "metrics.jsonl") if r["type"] == "eval"]) for run in (single, multi)))
    for a, b in evals:
        assert abs(a["val_loss"] - b["val_loss"]) < LOSS_TOL
        assert a["val_token_accuracy"] == pytest.approx(b["val_token_accuracy"], abs=1e-9)
    assert _max_weight_diff(_final(single), _final(multi)) < WEIGHT_TOL
    model_one = {k: v.float() for k, v in load_file(str(next((single / "model").glob("*.safetensors")))).items()}
    model_two = {k: v.float() for k, v in load_file(str(next((multi / "model").glob("*.safetensors")))).items()}
    assert _max_weight_diff(model_one, model_two) < WEIGHT_TOL
    assert [e["event"] for e in read_jsonl(multi / "events.jsonl")].count("started") == 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_processes_train_like_one(runs: Runs, method: str) -> None:
    _assert_same_run(runs.get(method, 1), runs.get(method, 2, "ddp"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_fsdp_processes_train_like_one(runs: Runs, method: str) -> None:
    _assert_same_run(runs.get(method, 1), runs.get(method, 2, "fsdp"))


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (or timed out) before {what}")


@pytest.mark.slow
def test_sigkilled_two_process_run_resumes_and_finishes(runs: Runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = _args(runs.model, runs.data, run, "full", "fsdp")  # fsdp: gathered checkpoints
    proc = subprocess.Popen(_two(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def saved_step_3() -> bool:
        done = complete_checkpoints(run)
        return bool(done) and int(done[-1].name.split("-")[1]) >= 3

    _wait_for(saved_step_3, proc, "step 3 was saved")
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, without warning
    proc.wait(timeout=30)
    killed_at = int(complete_checkpoints(run)[-1].name.split("-")[1])
    assert killed_at < 10
    _run(_two(["train", "--resume", "--out", str(run)]))
    rows = _train_rows(run)
    assert [r["step"] for r in rows] == list(range(1, 11))
    events = [e["event"] for e in read_jsonl(run / "events.jsonl")]
    assert "resume" in events and events[-1] == "finished"
    assert _max_weight_diff(_final(runs.get("full", 1)), _final(run)) < WEIGHT_TOL


def test_killed_two_process_run_stops_every_rank_at_one_step_then_resumes(runs: Runs, tmp_path: Path) -> None:
    """`kill` (SIGTERM) mid-way: all ranks stop at the same step, rank 0 checkpoints it."""
    run = tmp_path / "run"
    args = _args(runs.model, runs.data, run, "lora") + ["train.save_every=1000"]
    proc = subprocess.Popen(_two(args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(lambda: any(r["step"] >= 2 for r in _train_rows(run)), proc, "step 2")
    proc.send_signal(signal.SIGTERM)  # forwarded by the launcher to torchrun, then to each rank
    assert proc.wait(timeout=60) == 130
    events = read_jsonl(run / "events.jsonl")
    assert events[-1]["event"] == "interrupted"
    stopped = events[-1]["step"]
    assert [p.name for p in complete_checkpoints(run)][-1] == f"step-{stopped:06d}"
    _run(_two(["train", "--resume", "--out", str(run)]))
    assert read_jsonl(run / "events.jsonl")[-1]["event"] == "finished"
    assert _max_weight_diff(_final(runs.get("lora", 1)), _final(run)) < WEIGHT_TOL


def test_error_on_one_rank_ends_the_run_promptly(runs: Runs, tmp_path: Path) -> None:
    args = _args(runs.model, runs.data, tmp_path / "run", "full")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), "-m", "fail_on_rank", *args]
    # Rank 0 is waiting in a collective for rank 1 when rank 1 fails. With the process-group
    # timeout at an hour, a run that relied on it would hang past the 240 s below (TimeoutExpired).
    env = {**_env(), "TUNECRAFT_DIST_TIMEOUT_S": "3600",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode != 0
    assert "injected failure on rank 1" in res.stdout + res.stderr
