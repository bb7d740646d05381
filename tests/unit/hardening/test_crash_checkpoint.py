"""Checkpoints under crashes, corruption, mismatches, changed data and a full disk.

Real tiny models and real training runs (in process, fp32, deterministic); crashes are a real
child process SIGKILLed at the worst moment; a full disk is ENOSPC raised from the real write
path (safetensors' `save_file` as checkpoint.py calls it).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from processes import die_between_renames, run_in_child
from runs import train_config
from safetensors.torch import load_file, save_file
from tiny import write_chat_data

from tunecraft import durable, rundir
from tunecraft.errors import TunecraftError
from tunecraft.train import checkpoint as ckpt


@pytest.fixture
def make_cfg(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., Any]:
    """Configs of a tiny full fine-tuning run on 64 chats (the training tests' settings)."""
    from tunecraft.config import build_config

    chats = write_chat_data(tmp_path / "chats.jsonl", 64)

    def make(**values: Any) -> Any:
        base = {"model.name": str(tiny_model_dir), "data.train": str(chats),
                "train.out": str(tmp_path / "run"), "train.precision": "fp32", "train.lr": 1e-3,
                "train.epochs": 1, "train.method": "full"}
        return build_config(values={**base, **values})

    return make


def tiny_model(model_dir: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from tunecraft.models.load import load_model

    model = load_model(model_dir)
    model.requires_grad_(True)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    ids = torch.arange(12).remainder(50).unsqueeze(0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "trainable.safetensors"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def events(run: Path) -> list[dict[str, Any]]:
    return rundir.read_events(run)


def cfg_for(make_cfg: Any, data: Path | None = None, **values: Any) -> Any:
    base = {"train.save_every": 1, "train.eval_every": 2, "train.keep_checkpoints": 3,
            "train.deterministic": True, "train.threads": 1, "train.batch_size": 8,
            "train.micro_batch_size": 4, "train.max_steps": 6}
    if data is not None:
        base["data.train"] = str(data)
    return make_cfg(**{**base, **values})


# ----------------------------------------------------------------------------- re-saving a step


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_resaving_a_step_never_loses_it(tiny_model_dir: Path, tmp_path: Path, mode: str) -> None:
    root = tmp_path / "run" / rundir.CHECKPOINTS
    model, opt = tiny_model(tiny_model_dir)
    one_step(model, opt)
    ckpt.save_checkpoint(root, 4, model, opt, {}, keep=2)
    first = weights(root / "step-000004")
    one_step(model, opt)  # here, not in the child: it forked from a process with thread pools

    def resave() -> None:
        durable.use_exchange = mode == "exchange"
        die_between_renames()
        ckpt.save_checkpoint(root, 4, model, opt, {}, keep=2)

    status = run_in_child(resave)
    was_killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert was_killed == (mode == "renames")
    (only,) = rundir.complete_checkpoints(tmp_path / "run")
    assert only.name == "step-000004", "re-saving step 4 lost it"
    assert sorted(p.name for p in root.iterdir()) == ["step-000004"]
    fresh, opt2 = tiny_model(tiny_model_dir)
    ckpt.load_checkpoint(only, fresh, opt2)
    got = weights(only)
    if was_killed:
        assert all(torch.equal(got[k], first[k]) for k in first)
    else:
        assert any(not torch.equal(got[k], first[k]) for k in first)


def test_pruning_killed_mid_delete_leaves_no_torn_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Found by the fault injection: a checkpoint deleted in place and killed half way kept its
    COMPLETE marker without its weights, and resume then crashed on it."""
    run = tmp_path / "run"
    model, opt = tiny_model(tiny_model_dir)
    ckpt.save_checkpoint(run / rundir.CHECKPOINTS, 1, model, opt, {}, keep=1)

    def prune_and_die() -> None:
        real = shutil.rmtree

        def rmtree(path: os.PathLike[str] | str, *args: Any, **kwargs: Any) -> None:
            if not (Path(path) / rundir.COMPLETE).is_file():  # not a whole checkpoint
                return real(path, *args, **kwargs)
            (Path(path) / "trainable.safetensors").unlink()  # the first file goes
            os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies mid-delete

        shutil.rmtree = rmtree  # type: ignore[assignment]
        ckpt.save_checkpoint(run / rundir.CHECKPOINTS, 2, model, opt, {}, keep=1)  # prunes step 1

    status = run_in_child(prune_and_die)
    assert os.WIFSIGNALED(status), "the child should have died while pruning"
    done = rundir.complete_checkpoints(run)
    assert [p.name for p in done] == ["step-000002"]
    for path in done:
        ckpt.read_checkpoint(path)


# ----------------------------------------------------------------------------- corrupt newest


def test_corrupt_newest_checkpoint_falls_back_and_says_so(make_cfg: Any, tmp_path: Path) -> None:
    straight = train_config(cfg_for(make_cfg, **{"train.out": str(tmp_path / "straight")}))
    broken_run = tmp_path / "broken"
    cfg = cfg_for(make_cfg, **{"train.out": str(broken_run), "train.max_steps": 6})
    train_config(cfg)
    newest = rundir.complete_checkpoints(broken_run)[-1]
    assert newest.name == "step-000006"
    blob = (newest / "optimizer.safetensors").read_bytes()
    (newest / "optimizer.safetensors").write_bytes(blob[: len(blob) // 2])  # torn by a crash
    result = train_config(cfg, resume=True)  # SafetensorError escaped here before
    assert result.status == "finished"
    rows = events(broken_run)
    bad = [e for e in rows if e["event"] == "checkpoint_unreadable"]
    assert bad and "step-000006" in bad[0]["message"] and bad[0]["step"] == 6
    resumed = [e for e in rows if e["event"] == "resume"]
    assert resumed[-1]["message"] == "resumed from step-000005"
    assert (broken_run / rundir.CHECKPOINTS / "step-000006.corrupt").is_dir()
    final = weights(rundir.complete_checkpoints(broken_run)[-1])
    expected = weights(rundir.complete_checkpoints(straight.run_dir)[-1])
    for key, value in expected.items():
        assert torch.equal(final[key], value), f"{key}: the fallback resume diverged"


def test_no_readable_checkpoint_starts_over(make_cfg: Any, tmp_path: Path) -> None:
    cfg = cfg_for(make_cfg, **{"train.max_steps": 2, "train.keep_checkpoints": 1})
    run = train_config(cfg).run_dir
    (only,) = rundir.complete_checkpoints(run)
    (only / "state.json").write_text("{not json", encoding="utf-8")
    result = train_config(cfg, resume=True)
    assert result.status == "finished" and result.summary["steps"] == 2
    assert any(e["event"] == "resume" and "starting from step 0" in e["message"] for e in events(run))


# ----------------------------------------------------------------------------- shape mismatch


def test_shape_mismatch_is_refused_not_broadcast(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "run" / rundir.CHECKPOINTS
    model, opt = tiny_model(tiny_model_dir)
    one_step(model, opt)
    path = ckpt.save_checkpoint(root, 1, model, opt, {}, keep=1)
    tensors = weights(path)
    name = next(n for n, t in tensors.items() if t.dim() == 2 and t.shape[0] > 1)
    tensors[name] = tensors[name][:1].clone()  # (1, H): copy_ would broadcast it over every row
    save_file(tensors, str(path / "trainable.safetensors"))
    fresh, opt2 = tiny_model(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    with pytest.raises(TunecraftError) as info:  # broadcast silently before the fix
        ckpt.load_checkpoint(path, fresh, opt2)
    assert type(info.value).__name__ == "CheckpointMismatch"
    message = str(info.value)
    assert name in message and "(1, " in message and "--out" in message
    assert all(torch.equal(p, before[n]) for n, p in fresh.named_parameters()), "weights changed"


def test_unknown_tensor_name_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, opt = tiny_model(tiny_model_dir)
    path = ckpt.save_checkpoint(tmp_path / "c", 1, model, opt, {}, keep=1)
    tensors = weights(path)
    tensors["lora_A.extra"] = torch.zeros(2)
    save_file(tensors, str(path / "trainable.safetensors"))
    with pytest.raises(TunecraftError, match="not in the model"):  # a KeyError before
        ckpt.load_checkpoint(path, *tiny_model(tiny_model_dir))


# ----------------------------------------------------------------------------- changed data


def test_resume_on_changed_training_data_is_refused(make_cfg: Any, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 64)
    cfg = cfg_for(make_cfg, data, **{"train.max_steps": 2})
    train_config(cfg)
    rows = data.read_text(encoding="utf-8").splitlines()
    rows[3] = json.dumps({"messages": [{"role": "user", "content": "edited"},
                                       {"role": "assistant", "content": "changed"}]})
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(TunecraftError) as info:
        train_config(cfg, resume=True)
    message = str(info.value)
    assert "changed since this run started" in message and str(data) in message
    assert "Restore the original file" in message and "another --out" in message


def test_resume_on_unchanged_data_is_allowed(make_cfg: Any, tmp_path: Path) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 64)
    cfg = cfg_for(make_cfg, data, **{"train.max_steps": 2})
    run = train_config(cfg).run_dir
    assert set(rundir.read_split(run)["sha256"]) == {"train"}
    assert train_config(cfg, resume=True).status == "finished"


# ----------------------------------------------------------------------------- disk full


def test_disk_full_during_checkpoint_fails_cleanly_and_resumes(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    root = run / rundir.CHECKPOINTS
    root.mkdir(parents=True)
    stale = root / f"step-000001.tmp-{dead_pid()}"  # an earlier crash's temp dir, taking space
    stale.mkdir()
    (stale / "trainable.safetensors").write_bytes(b"\0" * 4096)
    calls = {"n": 0}
    real_save = ckpt.save_file

    def fill_up(tensors: dict[str, torch.Tensor], filename: str, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 3 * 3:  # three checkpoints of three files go through, then the disk is full
            assert not stale.exists(), "the dead temp dir should have been removed before saving"
            with open(filename, "wb") as fh:
                fh.write(b"partial")  # what a full disk leaves: a truncated file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", fill_up)
    cfg = cfg_for(make_cfg, **{"train.out": str(run)})
    with pytest.raises(TunecraftError) as info:  # a raw OSError traceback before the fix
        train_config(cfg)
    assert type(info.value).__name__ == "DiskFullError"
    message = str(info.value)
    assert re.search(r"free \d+ MB", message), message
    assert "step-000003" in message and "--resume" in message
    last = events(run)[-1]
    assert last["event"] == "failed" and re.search(r"free \d+ MB", last["message"])
    summary = rundir.read_summary(run)
    assert summary["status"] == "failed" and "no space left" in summary["message"]
    assert [p.name for p in rundir.complete_checkpoints(run)] == ["step-000001", "step-000002", "step-000003"]
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    ckpt.read_checkpoint(root / "step-000003")  # the previous checkpoint is whole
    monkeypatch.setattr(ckpt, "save_file", real_save)  # space freed
    result = train_config(cfg, resume=True)
    assert result.status == "finished" and result.summary["steps"] == 6


def test_disk_full_message_says_how_much_to_free(tmp_path: Path) -> None:
    free = durable.shutil.disk_usage(tmp_path).free
    err = durable.disk_full(tmp_path / "x", free + 50 * 2**20)
    assert re.search(r"free (5[01]) MB", str(err)), str(err)
    assert "no space left on device" in str(err)
