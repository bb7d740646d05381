"""The run directory's logs: metrics.jsonl, events.jsonl and summary.json (rank 0 writes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _append(path: Path, row: dict[str, Any]) -> None:
    # One line per write, flushed and fsynced: a killed run keeps every row it reported.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunLog:
    """Appends metric and event rows; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.t0 = time.time()

    def metric(self, kind: str, **fields: Any) -> None:
        if self.enabled:
            _append(self.run_dir / "metrics.jsonl", {"type": kind, **fields})

    def event(self, kind: str, message: str, **fields: Any) -> None:
        if self.enabled:
            row = {"event": kind, "time": round(time.time(), 3), "message": message, **fields}
            _append(self.run_dir / "events.jsonl", row)

    def summary(self, payload: dict[str, Any]) -> None:
        if self.enabled:
            write_json_atomic(self.run_dir / "summary.json", payload)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL log; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
