"""The fine-tuning service's state in SQLite (stdlib `sqlite3`, WAL): files, jobs, events, checkpoints.

One database file under the service's data dir. Every write is one transaction, so a server
killed at any moment leaves each job, file and event either recorded whole or not at all; the
job runner and the API handlers share one connection behind a lock (writes are tiny).

Rows hold the facts; `service.objects` turns them into the OpenAI object shapes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,          -- the client's name: metadata only, never a path
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    path TEXT NOT NULL,              -- where the server stored it (server-made name)
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    metadata TEXT NOT NULL,          -- JSON object
    method TEXT NOT NULL,            -- JSON: {"type": "supervised", "supervised": {...}}
    hyperparameters TEXT NOT NULL,   -- JSON: what the client asked ("auto" or values)
    resolved TEXT NOT NULL DEFAULT '{}',  -- JSON: the values training used
    run_dir TEXT NOT NULL,
    fine_tuned_model TEXT,
    finished_at INTEGER,
    trained_tokens INTEGER,
    estimated_finish INTEGER,
    error TEXT,                      -- JSON: {code, message, param}
    resume INTEGER NOT NULL DEFAULT 0,   -- the next run continues from the last checkpoint
    requested TEXT                   -- cancel | pause: asked of a running job, not yet done
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,               -- what it mirrors (e.g. "metrics:train:12"): never twice
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT,
    UNIQUE (job_id, key)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    UNIQUE (job_id, step)
);
"""

JSON_COLUMNS = ("metadata", "method", "hyperparameters", "resolved", "error", "data", "metrics")


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    has_more: bool


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS:
        if key in out and isinstance(out[key], str):
            out[key] = json.loads(out[key])
    return out


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


class Store:
    """The service database. Thread-safe: one connection, one lock, one transaction per call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a reported upload or event survives a crash
        self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- generic

    def _insert(self, table: str, row: dict[str, Any]) -> None:
        keys = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._tx() as db:
            db.execute(f"INSERT INTO {table} ({keys}) VALUES ({marks})", [_encode(v) for v in row.values()])

    def _get(self, table: str, id_: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE id = ?", (id_,)).fetchone()
        return _decode(row) if row else None

    def _page(self, table: str, where: str, args: tuple[Any, ...], after: str | None, limit: int) -> Page:
        """Newest first; `after` is the id of the last row of the previous page."""
        query, params = f"SELECT * FROM {table} WHERE {where}", list(args)
        with self._lock:
            if after is not None:
                anchor = self._db.execute(f"SELECT seq FROM {table} WHERE id = ?", (after,)).fetchone()
                if anchor is None:
                    return Page([], False)
                query += " AND seq < ?"
                params.append(anchor["seq"])
            rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", (*params, limit + 1)).fetchall()
        return Page([_decode(r) for r in rows[:limit]], len(rows) > limit)

    # -- files

    def add_file(self, row: dict[str, Any]) -> None:
        self._insert("files", row)

    def file(self, file_id: str) -> dict[str, Any] | None:
        row = self._get("files", file_id)
        return row if row and not row["deleted"] else None

    def files(self, purpose: str | None, after: str | None, limit: int) -> Page:
        where, args = ("deleted = 0 AND purpose = ?", (purpose,)) if purpose else ("deleted = 0", ())
        return self._page("files", where, args, after, limit)

    def delete_file(self, file_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))

    # -- jobs

    def add_job(self, row: dict[str, Any]) -> None:
        self._insert("jobs", row)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._get("jobs", job_id)

    def jobs(self, after: str | None, limit: int) -> Page:
        return self._page("jobs", "1 = 1", (), after, limit)

    def jobs_in(self, *statuses: str) -> list[dict[str, Any]]:
        """Jobs with one of `statuses`, oldest first (the order they run in)."""
        marks = ", ".join("?" for _ in statuses)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses).fetchall()
        return [_decode(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*(_encode(v) for v in fields.values()), job_id])

    def transition(self, job_id: str, allowed: tuple[str, ...], **fields: Any) -> bool:
        """Update a job only if its status is in `allowed` (one transaction: no lost race)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" for _ in allowed)
        with self._tx() as db:
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                             [*(_encode(v) for v in fields.values()), job_id, *allowed])
            return cur.rowcount == 1

    # -- events

    def add_event(self, job_id: str, key: str, message: str, level: str = "info",
                  type_: str = "message", data: dict[str, Any] | None = None, created_at: int | None = None) -> bool:
        """Record an event once per (job, key); False when it was already recorded."""
        from tunecraft.service.ids import new_id

        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (id, job_id, key, created_at, level, message, type, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id("ftevent"), job_id, key, created_at or int(time.time()), level, message, type_,
                 json.dumps(data) if data is not None else None),
            )
            return cur.rowcount == 1

    def events(self, job_id: str, after: str | None, limit: int) -> Page:
        return self._page("events", "job_id = ?", (job_id,), after, limit)

    # -- checkpoints

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any]) -> None:
        from tunecraft.service.ids import new_id

        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, step, created_at, metrics) VALUES (?, ?, ?, ?, ?)",
                (new_id("ftckpt"), job_id, step, int(time.time()), json.dumps(metrics)),
            )

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> Page:
        return self._page("checkpoints", "job_id = ?", (job_id,), after, limit)
