"""Atomic, durable writes: the one way tunecraft replaces a file or a directory.

Every write goes to a temp name beside the target (`NAME.tmp-<pid>`), is fsynced, then renamed
over the target, and the parent directory is fsynced so the rename survives a crash: a reader
sees the old content or the new one, never a torn file. Used for conversion, the tokenized
cache, checkpoints, `model/`, exports and every JSON or YAML file of the run directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(directory: Path) -> None:
    """Persist a directory's entries (a rename into it is durable only after this)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file below `root`, then `root` itself."""
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            with open(os.path.join(dirpath, fname), "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(root)


def temp_name(target: Path) -> Path:
    """The temp path a write to `target` goes through (stale ones match `NAME.tmp-*`)."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temp file, which then replaces `path` durably."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path, payload: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished, fsynced temp directory over `final` (an old `final` is removed after)."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temp directory beside `final`; on success it replaces `final` durably.

    On any exception (Ctrl-C included) the temp directory is removed and `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
