"""The dashboard's background commands: `tunecraft eval` and `tunecraft export` on a job's run.

Each runs the CLI's own command in a child process (the job runner's child module, so it dies
with the server), one of each kind per job at a time. Its state is the process itself and its
log, so nothing needs recording: once it exits, the run directory (eval.json, the export folder)
holds the result, read through the usual readers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 12


@dataclass
class Task:
    kind: str  # "eval" | "export:<format>"
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def state(self) -> str:
        code = self.proc.poll()
        return "running" if code is None else ("succeeded" if code == 0 else "failed")

    def log_tail(self) -> list[str]:
        if not self.log_path.is_file():
            return []
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [ln for ln in lines if ln.strip()][-LOG_TAIL_LINES:]

    def to_json(self) -> dict[str, Any]:
        tail = self.log_tail()
        errors = [ln.removeprefix("error: ") for ln in tail if ln.startswith("error:")]
        return {"kind": self.kind, "state": self.state, "started_at": int(self.started_at), "log": tail,
                "error": (" ".join(errors) or (tail[-1] if tail else "it exited with an error"))
                if self.state == "failed" else None}


class Tasks:
    """Background CLI children keyed by (job id, kind)."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], Task] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str, kind: str) -> Task | None:
        with self._lock:
            return self._tasks.get((job_id, kind))

    def start(self, job_id: str, kind: str, args: list[str], log_path: Path) -> Task | None:
        """Run `tunecraft ARGS`; None when the same kind already runs for this job."""
        with self._lock:
            old = self._tasks.get((job_id, kind))
            if old is not None and old.state == "running":
                return None
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log:
                env = {**os.environ, "TUNECRAFT_SERVICE_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
                       "COLUMNS": "120"}
                proc = subprocess.Popen([sys.executable, "-m", "tunecraft.service.child", *args], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            task = Task(kind, proc, log_path, time.time())
            self._tasks[(job_id, kind)] = task
            return task

    def stop(self, timeout: float = 30.0) -> None:
        """Stop what still runs (a half-written export is never moved into place)."""
        with self._lock:
            running = [t for t in self._tasks.values() if t.proc.poll() is None]
        for task in running:
            task.proc.send_signal(signal.SIGTERM)
        for task in running:
            try:
                task.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                task.proc.kill()
