"""Replacing `model/` (and any directory written through `durable`) survives a crash at the
worst moment: a real child process is SIGKILLed between the two renames of the fallback swap,
and the next open restores the previous version and removes what the crash left behind.

With Linux's RENAME_EXCHANGE the swap is one atomic step, so there is no such moment at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from processes import die_between_renames, run_in_child
from safetensors.torch import load_file

from tunecraft import durable, rundir


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def set_mode(mode: str) -> None:
    """(In a child.) "renames" forces the two-rename fallback; "exchange" keeps the atomic swap."""
    durable.use_exchange = mode == "exchange"


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _model_and_tokenizer(model_dir: Path):
    from tunecraft.models.load import load_model, load_tokenizer

    return load_model(model_dir), load_tokenizer(model_dir)


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_model_dir_killed_mid_replacement_is_recovered(tiny_model_dir: Path, tmp_path: Path, mode: str) -> None:
    from tunecraft.train.deliver import save_deliverable

    run = tmp_path / "run"
    model, tokenizer = _model_and_tokenizer(tiny_model_dir)
    save_deliverable(model, tokenizer, run / "model", "full")
    rundir.RunLog(run).summary({"status": "finished", "method": "full"})
    before = load_file(str(run / "model" / "model.safetensors"))
    with torch.no_grad():  # the new version, made here: the child only writes it
        for p in model.parameters():
            p.add_(1.0)

    def resave() -> None:
        set_mode(mode)
        die_between_renames()
        save_deliverable(model, tokenizer, run / "model", "full")

    status = run_in_child(resave)
    assert killed(status) == (mode == "renames"), "the atomic exchange has no window to die in"
    assert rundir.is_run_dir(run), "model/ vanished: the run is invisible"
    assert leftovers(run) == []
    after = load_file(str(run / "model" / "model.safetensors"))
    shift = 0.0 if killed(status) else 1.0  # the old version, whole, or the new one, whole
    for key, value in before.items():
        torch.testing.assert_close(after[key], value + shift)


def test_failed_second_rename_rolls_back_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out"
    with durable.atomic_dir(final) as tmp:
        (tmp / "v").write_text("old")
    monkeypatch.setattr(durable, "use_exchange", False, raising=False)
    real = os.replace

    def refuse_second(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if ".tmp-" in Path(src).name and Path(dst) == final:
            raise OSError(5, "I/O error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", refuse_second)
    with pytest.raises(OSError), durable.atomic_dir(final) as tmp:
        (tmp / "v").write_text("new")
    assert (final / "v").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_recover_restores_parked_copy_and_clears_dead_leftovers(tmp_path: Path) -> None:
    final, dead = tmp_path / "model", dead_pid()
    parked = tmp_path / f"model.old-{dead}"
    parked.mkdir()
    (parked / "w").write_text("previous")
    half = tmp_path / f"model.tmp-{dead}"
    half.mkdir()
    (half / "w").write_text("torn")  # a temp dir is never promoted: it may be half written
    (tmp_path / f"summary.json.tmp-{dead}").write_text("{")
    durable.recover_dir(final)
    assert (final / "w").read_text() == "previous"
    assert leftovers(tmp_path) == [f"summary.json.tmp-{dead}"]  # another target's: not ours


def test_recover_leaves_a_live_writer_alone(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f"model.tmp-{writer.pid}"
        busy.mkdir()
        durable.recover_dir(final)
        assert busy.is_dir(), "a live process's temp dir was removed under it"
    finally:
        writer.kill()
        writer.wait()
    durable.recover_dir(final)
    assert leftovers(tmp_path) == []


def test_atomic_dir_recovers_before_writing(tmp_path: Path) -> None:
    """Exports and checkpoints go through atomic_dir: a parked copy from a crash is dealt with."""
    final, dead = tmp_path / "export", dead_pid()
    (tmp_path / f"export.old-{dead}").mkdir()
    with durable.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("new")
    assert (final / "weights").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_every_directory_level_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda d: (synced.append(Path(d).name), real(d)))
    with durable.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "sub" / "deeper").mkdir(parents=True)
        (tmp / "sub" / "deeper" / "f").write_text("x")
    assert {"sub", "deeper", tmp_path.name} <= set(synced)
