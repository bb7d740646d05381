"""Durable writes: fsync a file tree and its directory so a rename after it survives a crash.

Used by every "write to a temp dir, fsync, rename" in tunecraft (model conversion, checkpoints).
"""

from __future__ import annotations

import os
from pathlib import Path


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
