"""Fault injection: kill a run at random moments while it checkpoints and delivers `model/`.

Part one, 100 kills, cheap: a clean helper process (one torch thread) forks children that each
resume a tiny training run from its newest readable checkpoint and carry it on (an optimizer
step, `model/` on every second step, then the checkpoint, as the real loop orders them: eval
and `model/` before the step's checkpoint), through the real `checkpoint.save_checkpoint` and
`deliver.save_deliverable`. The helper SIGKILLs each child after a random delay, alternating the
atomic-exchange swap with the two-rename fallback, and checks the directory as the crash left it:
every checkpoint marked COMPLETE reads back whole and holds exactly the uninterrupted run's
weights for its step; `model/`, when present, is complete and holds the uninterrupted run's
weights of some step; when absent, a parked whole copy restores it. After recovery nothing is left
over. Every run carried to its end matches the uninterrupted run bit for bit.

Part two, a few kills of the real `tunecraft train` at random moments, each followed by
`tunecraft train --resume`, which must end with the uninterrupted run's final weights or
print a clear error (no traceback).

The counts of each outcome are printed (run with `-s` to see them).
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
STEPS = 8  # optimizer steps of the forked runs
KEEP = 2  # checkpoints kept (pruning runs on every save)
FORK_TRIALS = 100
CLI_KILLS = 3
SEED = 18


# ============================================================================ part one (forks)


def _batch(step: int) -> Any:
    import torch

    return (torch.arange(16) * (step + 3)).remainder(200).unsqueeze(0)  # (1, 16) token ids


def _child_run(model_dir: Path, run: Path, keep: int) -> None:
    """(In a forked child.) Resume `run` from its newest readable checkpoint and finish it."""
    import torch

    from tunecraft import rundir
    from tunecraft.models.load import load_model, load_tokenizer
    from tunecraft.train import checkpoint as ckpt
    from tunecraft.train.deliver import save_deliverable

    model = load_model(model_dir)
    model.requires_grad_(True)
    tokenizer = load_tokenizer(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    start = 0
    for path in reversed(rundir.complete_checkpoints(run)):  # recovery runs in here first
        try:
            start = int(ckpt.load_checkpoint(path, model, optimizer)["step"])
            break
        except ckpt.UnreadableCheckpoint:
            continue
    for step in range(start, STEPS):
        ids = _batch(step)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 2 == 0:
            save_deliverable(model, tokenizer, run / rundir.MODEL, "full")
        ckpt.save_checkpoint(run / rundir.CHECKPOINTS, step + 1, model, optimizer, {}, keep)
    (run / "DONE").write_text("ok\n", encoding="utf-8")


def _fork(model_dir: Path, run: Path, exchange: bool, keep: int = KEEP) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch

            from tunecraft import durable

            faulthandler.register(signal.SIGUSR1)  # a hung child shows where, then dies
            torch.set_num_threads(1)
            durable.use_exchange = exchange
            _child_run(model_dir, run, keep)
            code = 0
        except BaseException as exc:  # noqa: BLE001  (the child reports any failure, then exits)
            from tunecraft.errors import TunecraftError

            kind = "clear" if isinstance(exc, TunecraftError) else "crash"
            (run / "ERROR").write_text(f"{kind}\n{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        finally:
            os._exit(code)
    return pid


def _wait(
    pid: int, kill_after: float | None, trigger: Callable[[], bool] | None = None, timeout: float = 30.0
) -> tuple[bool, int]:
    """(killed by us, wait status). With `trigger`, `kill_after` counts from when it first holds."""
    start = time.monotonic()
    armed_at = None if trigger is not None else start
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False, status
        now = time.monotonic()
        if armed_at is None and trigger is not None and trigger():
            armed_at = now
        if kill_after is not None and armed_at is not None and now - armed_at >= kill_after:
            os.kill(pid, signal.SIGKILL)
            return True, os.waitpid(pid, 0)[1]
        if now - start > timeout:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("a forked run hung")
        time.sleep(0.0005)


def _leftovers(run: Path) -> list[Path]:
    dirs = [run, run / "checkpoints"]
    return [p for d in dirs if d.is_dir() for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return all(key in b and torch.equal(value, b[key]) for key, value in a.items())


def _model_weights(model_dir: Path) -> dict[str, Any]:
    """A complete `model/` (config, weights, tokenizer) or an AssertionError: never half-written."""
    from safetensors.torch import load_file

    names = {p.name for p in model_dir.iterdir()}
    missing = {"config.json", "model.safetensors", "tokenizer_config.json"} - names
    assert not missing, f"half-written model/: {sorted(missing)} missing ({sorted(names)})"
    json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return load_file(str(model_dir / "model.safetensors"))


def _check_state(run: Path, reference: dict[int, dict[str, Any]], counts: Counter[str]) -> None:
    """The directory exactly as the crash left it, then after recovery."""
    from tunecraft import durable, rundir
    from tunecraft.train import checkpoint as ckpt

    raw = _leftovers(run)
    counts["state: temp dir left by the kill"] += any(".tmp-" in p.name for p in raw)
    counts["state: previous version parked (.old)"] += any(".old-" in p.name for p in raw)
    model_dir = run / rundir.MODEL
    parked_model = any(p.name.startswith("model.old-") for p in raw)
    if model_dir.exists():
        assert any(_equal(_model_weights(model_dir), w) for w in reference.values()), "model/ is off-trajectory"
    elif parked_model:
        counts["state: model/ missing, parked copy restored"] += 1
    root = run / rundir.CHECKPOINTS
    raw_complete = [p for p in root.iterdir() if rundir.checkpoint_step(p) is not None
                    and (p / rundir.COMPLETE).is_file()] if root.is_dir() else []
    for path in raw_complete:  # a COMPLETE checkpoint is never torn, even before recovery
        files = ckpt.read_checkpoint(path)
        assert _equal(files.trainable, reference[rundir.checkpoint_step(path) or 0]), path.name
    done = rundir.complete_checkpoints(run)  # recovery happens here
    durable.recover_dir(model_dir)
    assert _leftovers(run) == [], f"leftovers after recovery: {_leftovers(run)}"
    newest = rundir.checkpoint_step(done[-1]) if done else 0
    counts["state: no checkpoint yet"] += newest == 0
    if (newest or 0) >= 2:
        assert model_dir.is_dir(), "model/ lost after its step was checkpointed"
        assert any(_equal(_model_weights(model_dir), w) for w in reference.values())
    for path in done:
        assert _equal(ckpt.read_checkpoint(path).trainable, reference[rundir.checkpoint_step(path) or 0])


def _present(parents: list[Path], marker: str, prefix: str = "") -> Callable[[], bool]:
    """Holds while an entry named `prefix*marker*` exists in one of `parents`."""

    def check() -> bool:
        for parent in parents:
            try:
                if any(p.name.startswith(prefix) and marker in p.name for p in parent.iterdir()):
                    return True
            except FileNotFoundError:
                continue
        return False

    return check


def _moment(trial: int, rng: random.Random, run: Path, timing: tuple[float, float], newest: int
            ) -> tuple[str, float, Callable[[], bool] | None]:
    """Where trial `trial` kills: at a random moment of what is left to run, a random few
    milliseconds into a write of model/ or of a checkpoint (where the swaps happen), or the
    moment a previous version is parked by the two-rename fallback."""
    load_s, step_s = timing
    kind = trial % 4
    if kind == 0:
        return "kill at a random moment", rng.uniform(0.0, load_s + (STEPS - newest) * step_s), None
    if kind == 1:
        return "kill while writing model/", rng.uniform(0.0, 0.03), _present([run], ".tmp-", "model")
    if kind == 2:
        return ("kill while writing a checkpoint", rng.uniform(0.0, 0.01),
                _present([run / "checkpoints"], ".tmp-", "step-"))
    return "kill while a version is parked (.old)", 0.0, _present([run, run / "checkpoints"], ".old-")


def _exchange(trial: int) -> bool:
    """Half the swaps atomic, half by the two-rename fallback (which parking kills need)."""
    return trial % 4 != 3 and (trial // 4) % 2 == 0


def _reference(model_dir: Path, work: Path) -> tuple[dict[int, dict[str, Any]], tuple[float, float]]:
    """Per-step weights of an uninterrupted run (every checkpoint kept), and how long a child
    takes to start and to run one step."""
    from tunecraft import rundir
    from tunecraft.train import checkpoint as ckpt

    run = work / "reference"
    run.mkdir(parents=True)
    t0 = time.monotonic()
    _, status = _wait(_fork(model_dir, run, exchange=True, keep=STEPS), None)
    assert status == 0, (run / "ERROR").read_text() if (run / "ERROR").exists() else status
    duration = time.monotonic() - t0
    t0 = time.monotonic()
    _wait(_fork(model_dir, run, exchange=True, keep=STEPS), None)  # nothing left to do: start-up only
    load_s = time.monotonic() - t0
    weights = {rundir.checkpoint_step(p) or 0: ckpt.read_checkpoint(p).trainable
               for p in rundir.complete_checkpoints(run)}
    assert sorted(weights) == list(range(1, STEPS + 1))
    assert _equal(_model_weights(run / rundir.MODEL), weights[STEPS])
    return weights, (load_s, max(0.0, duration - load_s) / STEPS)


def fork_campaign(model_dir: str, work: str, trials: int, seed: int) -> dict[str, int]:
    """Entry point of the helper process: run the kills, check each state, count outcomes."""
    import torch

    # Imported once here, so that children fork warm; nothing is loaded here, though: loading
    # starts helper threads, and a fork while one of them holds a lock can deadlock the child.
    import transformers.models.llama.modeling_llama  # noqa: F401

    import tunecraft.models.load  # noqa: F401
    import tunecraft.train.deliver  # noqa: F401
    from tunecraft import rundir
    from tunecraft.train import checkpoint as ckpt

    torch.set_num_threads(1)
    rng, counts = random.Random(seed), Counter()
    reference, timing = _reference(Path(model_dir), Path(work))
    run_no, run = 0, Path(work) / "run-0"
    run.mkdir()
    for trial in range(trials + 1):
        last = trial == trials  # the last child is not killed: the run must then finish
        exchange = _exchange(trial)
        newest = rundir.checkpoint_step(done[-1]) or 0 if (done := rundir.complete_checkpoints(run)) else 0
        kind, delay, trigger = _moment(trial, rng, run, timing, newest)
        killed, _status = _wait(_fork(Path(model_dir), run, exchange), None if last else delay, trigger)
        if (run / "ERROR").exists():
            verdict, _, message = (run / "ERROR").read_text().partition("\n")
            assert verdict == "clear", f"a resumed run crashed: {message}"
            counts["resume refused with a clear error"] += 1  # then the next trial starts afresh
            run_no += 1
            run = Path(work) / f"run-{run_no}"
            run.mkdir()
            continue
        if not last:
            counts["kills"] += 1
            counts[kind] += 1
            counts["kill landed (child was running)" if killed else "child finished before the kill"] += 1
            counts["fallback swap (two renames)" if not exchange else "atomic exchange swap"] += 1
        _check_state(run, reference, counts)
        if (run / "DONE").exists():  # carried to its end across kills: must equal the reference
            final = ckpt.read_checkpoint(rundir.complete_checkpoints(run)[-1]).trainable
            assert _equal(final, reference[STEPS]), "resumed run ended with other weights"
            assert _equal(_model_weights(run / rundir.MODEL), reference[STEPS])
            counts["runs finished with identical final weights"] += 1
            run_no += 1
            run = Path(work) / f"run-{run_no}"
            run.mkdir()
    return dict(counts)


def test_hundred_random_kills_while_checkpointing_and_delivering(tiny_model_dir: Path, tmp_path: Path) -> None:
    code = (
        f"import sys, json; sys.path[:0] = [{str(HERE)!r}, {str(TESTS)!r}]\n"
        "import test_crash_fault_injection as m\n"
        f"print('COUNTS ' + json.dumps(m.fork_campaign({str(tiny_model_dir)!r}, "
        f"{str(tmp_path)!r}, {FORK_TRIALS}, {SEED})))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240,
                         check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("COUNTS "))
    counts = json.loads(line.removeprefix("COUNTS "))
    print("\nfault injection (forked runs):", json.dumps(counts, indent=1, sort_keys=True))
    assert counts["kills"] == FORK_TRIALS
    assert counts["kill landed (child was running)"] >= FORK_TRIALS // 2, "kills came too late"
    assert counts["runs finished with identical final weights"] >= 1
    assert counts.get("resume refused with a clear error", 0) == 0  # none is expected here


# ============================================================================ part two (CLI)


def _cmd(model: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "tunecraft", "train", "--model", str(model), "--data", str(data),
        "--out", str(out), "--method", "full", "--epochs", "2", "--batch-size", "4", "--lr", "3e-3",
        "train.deterministic=true", "train.micro_batch_size=2", "train.eval_every=3",
        "train.save_every=1", "train.patience=null", "train.threads=1", "train.keep_checkpoints=2",
    ]


def _final(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    from tunecraft import rundir

    last = rundir.complete_checkpoints(run)[-1]
    return load_file(str(last / "trainable.safetensors")), _model_weights(run / rundir.MODEL)


def _cli_state_ok(run: Path) -> None:
    """Right after a kill: model/ absent or complete; every complete checkpoint reads back."""
    from tunecraft import rundir
    from tunecraft.train import checkpoint as ckpt

    if (run / rundir.MODEL).exists():
        _model_weights(run / rundir.MODEL)
    for path in rundir.complete_checkpoints(run):
        ckpt.read_checkpoint(path)


def _started(run: Path) -> bool:
    from tunecraft import rundir

    return any(e.get("event") == "started" for e in rundir.read_events(run))


def _launch(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), time.monotonic()


def _time_to_start(proc: subprocess.Popen[bytes], run: Path, timeout: float = 120.0) -> float:
    """Seconds until the run logs "started" (start-up and planning done; training begins)."""
    t0 = time.monotonic()
    while not _started(run) and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.01)
    return time.monotonic() - t0


def test_real_train_killed_at_random_then_resumed(tiny_model_dir: Path, chat_data_64: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    proc, t0 = _launch(_cmd(tiny_model_dir, chat_data_64, straight), env)
    startup = _time_to_start(proc, straight)
    assert proc.wait(timeout=120) == 0
    training = time.monotonic() - t0 - startup
    want_ckpt, want_model = _final(straight)
    rng, counts = random.Random(SEED), Counter()
    for i in range(CLI_KILLS):
        run = tmp_path / f"killed-{i}"
        proc, t0 = _launch(_cmd(tiny_model_dir, chat_data_64, run), env)
        if i == 0:  # anywhere, start-up included: may leave no run to resume
            delay = rng.uniform(0.0, startup + training)
        else:  # while it trains, checkpoints and writes model/
            delay = _time_to_start(proc, run) + rng.uniform(0.0, training)
        try:
            proc.wait(timeout=max(0.0, delay - (time.monotonic() - t0)))
            counts["finished before the kill"] += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            counts["killed"] += 1
        _cli_state_ok(run)
        res = subprocess.run([sys.executable, "-m", "tunecraft", "train", "--resume", "--out", str(run)],
                             env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            assert "Traceback" not in res.stderr and res.stderr.strip(), res.stderr[-3000:]
            print(f"\nrun {i}: resume refused: {res.stderr.strip().splitlines()[-1]}")
            counts["resume refused with a clear error"] += 1
            continue
        got_ckpt, got_model = _final(run)
        assert _equal(want_ckpt, got_ckpt) and _equal(want_model, got_model), f"run {i} diverged"
        counts["resumed to identical final weights"] += 1
    print("\nfault injection (tunecraft train):", json.dumps(dict(counts), sort_keys=True))
    assert counts["resumed to identical final weights"] + counts["resume refused with a clear error"] == CLI_KILLS


@pytest.fixture
def chat_data_64(tmp_path: Path) -> Path:
    from tiny import write_chat_data

    return write_chat_data(tmp_path / "train.jsonl", 64)
