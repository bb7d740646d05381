"""Uploaded files: stored under server-made names, written atomically, bounded in size.

The client's file name is kept as metadata only; the stored path is `files/<id>.<ext>` with the
extension taken from a short allow-list, so `../../x` or an absolute name can never become a path.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tunecraft.durable import fsync_dir, temp_name
from tunecraft.service.ids import new_id
from tunecraft.service.store import Store

PURPOSES = ("fine-tune",)
SUFFIXES = (".jsonl", ".csv")  # what the data reader knows; anything else is stored as .jsonl
MAX_FILE_BYTES = 512 << 20  # 512 MiB: far more chat data than a CPU or single GPU trains on


class UploadTooLarge(Exception):
    pass


def stored_suffix(filename: str) -> str:
    lower = filename.lower()
    return next((s for s in SUFFIXES if lower.endswith(s)), ".jsonl")


async def save_upload(store: Store, root: Path, filename: str, purpose: str,
                      chunks: AsyncIterator[bytes], max_bytes: int = MAX_FILE_BYTES) -> dict[str, Any]:
    """Stream an upload to disk (temp name, fsync, rename), then record it; returns the row."""
    file_id = new_id("file")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{file_id}{stored_suffix(filename)}"
    tmp = temp_name(final)
    size = 0
    try:
        with open(tmp, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    row = {"id": file_id, "filename": filename[:512], "purpose": purpose, "bytes": size,
           "created_at": int(time.time()), "path": str(final)}
    store.add_file(row)  # only a file that is wholly on disk is ever listed
    return row
