"""Checkpoints written off the training thread: snapshots are copies, errors come back to the
training thread, and model/ (written from the kept best weights) equals the best step's weights."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from runs import train_config
from tunecraft import rundir
from tunecraft.durable import DiskFullError
from tunecraft.train import checkpoint as ckpt


def test_a_snapshot_is_a_copy_the_next_step_cannot_change() -> None:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    snap = ckpt.snapshot(1, model, opt, {}, copy=True)
    live = ckpt.snapshot(1, model, opt, {})
    before = {k: v.clone() for k, v in snap.weights.items()}
    moments = {k: v.clone() for k, v in snap.optimizer.items()}
    model(torch.randn(2, 4)).sum().backward()
    opt.step()  # updates weights and moments in place
    assert all(torch.equal(before[k], snap.weights[k]) for k in before)
    assert all(torch.equal(moments[k], snap.optimizer[k]) for k in moments)
    assert not all(torch.equal(before[k], live.weights[k]) for k in before)  # without copy: the live tensors


def test_the_writer_runs_one_job_at_a_time_and_reports_back_on_the_callers_thread() -> None:
    writer = ckpt.BackgroundWriter()
    seen: list[tuple[str, str]] = []
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "first"

    writer.submit(slow, lambda r: seen.append((r, threading.current_thread().name)))
    started.wait(5)
    writer.poll()  # still running: nothing collected, nothing blocks
    assert seen == []
    release.set()
    writer.submit(lambda: "second", lambda r: seen.append((r, threading.current_thread().name)))
    writer.wait()
    main = threading.current_thread().name
    assert seen == [("first", main), ("second", main)]


def test_a_failed_write_raises_on_the_training_thread() -> None:
    writer = ckpt.BackgroundWriter()

    def full() -> None:
        raise DiskFullError("no space left on device")

    writer.submit(full, lambda _r: None)
    with pytest.raises(DiskFullError, match="no space"):
        writer.wait()
    writer.wait()  # reported once; the writer is free again


@pytest.mark.parametrize("method", ["full", "lora"])
def test_model_dir_holds_the_best_steps_weights(make_cfg, tmp_path, method: str) -> None:
    result = train_config(make_cfg(**{"train.method": method, "train.max_steps": 5, "train.eval_every": 1,
                                      "train.save_every": 1, "train.keep_checkpoints": 5,
                                      "train.lr": 1e-2 if method == "lora" else 1e-3}))
    run = result.run_dir
    best = result.summary["best_step"]
    saved = load_file(str(run / rundir.CHECKPOINTS / f"step-{best:06d}" / "trainable.safetensors"))
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    delivered = load_file(str(run / rundir.MODEL / name))
    if method == "lora":  # peft drops the adapter name and the wrapper prefix
        saved = {k.replace(".default", "").removeprefix("base_model.model."): v for k, v in saved.items()}
        delivered = {k.removeprefix("base_model.model."): v for k, v in delivered.items()}
    common = set(saved) & set(delivered)
    assert len(common) >= len(delivered) - 1  # (a tied LM head is stored once)
    for key in common:
        assert torch.equal(saved[key], delivered[key].to(saved[key].dtype)), key
    events = [e["event"] for e in rundir.read_events(run)]
    assert events.count("checkpoint") == 5 and events[-1] == "finished"
    assert result.summary["background_write_s"] > 0


def test_the_last_checkpoint_shares_model_dirs_weights_file_when_they_are_the_same(make_cfg, tmp_path) -> None:
    """A full fine-tune whose best step is its last writes those weights once: the checkpoint
    hard-links model/'s file (same inode), and still loads and resumes on its own."""
    import os

    from tunecraft.train.checkpoint import read_checkpoint

    result = train_config(make_cfg(**{"train.method": "full", "train.max_steps": 3, "train.eval_every": 1,
                                      "train.lr": 1e-3, "train.out": str(tmp_path / "run")}))
    run, step = result.run_dir, result.summary["steps"]
    assert result.summary["best_step"] == step  # still improving at its end
    last = run / rundir.CHECKPOINTS / f"step-{step:06d}" / "trainable.safetensors"
    delivered = run / rundir.MODEL / "model.safetensors"
    assert os.stat(last).st_ino == os.stat(delivered).st_ino and os.stat(last).st_nlink == 2
    files = read_checkpoint(last.parent)
    stored = load_file(str(delivered))
    assert files.trainable.keys() == stored.keys()
    # model/ replaced later (a longer run) leaves the checkpoint's weights as they were.
    before = {k: v.clone() for k, v in files.trainable.items()}
    longer = train_config(make_cfg(**{"train.method": "full", "train.max_steps": 5, "train.eval_every": 1,
                                      "train.lr": 1e-3, "train.out": str(run)}), resume=True)
    assert longer.summary["steps"] == 5
    kept = load_file(str(last)) if last.exists() else None
    assert kept is None or all(torch.equal(kept[k], before[k]) for k in before)


def test_the_last_checkpoint_writes_its_own_weights_when_model_dir_holds_an_earlier_step(tmp_path) -> None:
    """`same_weights` is only a hint: a file that differs in any value is not linked."""
    import os

    from safetensors.torch import save_file

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    other = tmp_path / "other.safetensors"
    save_file({k: v.detach() + 1 for k, v in model.state_dict().items()}, str(other))
    path = ckpt.write_checkpoint(tmp_path / "ck", ckpt.snapshot(1, model, opt, {}), keep=2, same_weights=other)
    assert os.stat(path / "trainable.safetensors").st_ino != os.stat(other).st_ino
    same = tmp_path / "same.safetensors"
    save_file({k: v.detach() for k, v in model.state_dict().items()}, str(same))
    path = ckpt.write_checkpoint(tmp_path / "ck", ckpt.snapshot(2, model, opt, {}), keep=2, same_weights=same)
    assert os.stat(path / "trainable.safetensors").st_ino == os.stat(same).st_ino
