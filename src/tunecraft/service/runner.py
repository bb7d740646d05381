"""The job runner: validates files, runs jobs one at a time (or N) as child processes, mirrors progress.

It lives on its own thread, outside the API's request path. Each job trains in a child process
running the CLI's own `train` (so the run directory is exactly what `tunecraft train` writes),
and the runner mirrors that run directory into the store: events, metrics, checkpoints,
trained tokens and the estimated finish. Cancel and pause send SIGTERM, which the training loop
answers by checkpointing at the next step boundary; resume runs `train --resume`.

Crash safety: the store is the truth. A server that restarts finds jobs still marked running,
queues them again with `resume` set, and the CLI's resume continues from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft import rundir
from tunecraft.service.jobs import train_command
from tunecraft.service.objects import fine_tuned_name
from tunecraft.service.store import Store

POLL_S = 0.25  # how often the runner looks at children and their run directories
KILL_AFTER_S = 60.0  # a child that ignores SIGTERM this long is killed
MAX_ERROR_LINES = 40


@dataclass
class _Child:
    job_id: str
    proc: subprocess.Popen[bytes]
    log: Any  # the open log file the child writes to
    signalled_at: float | None = None
    events_offset: int = 0  # bytes of events.jsonl already mirrored
    metrics_offset: int = 0  # bytes of metrics.jsonl already mirrored
    total_steps: int | None = None  # from the run's "started" event


@dataclass
class RunnerSettings:
    max_parallel: int = 1
    job_settings: list[str] = field(default_factory=list)  # key=value passed to every job's train


class Runner:
    """Runs the store's jobs; `on_success(job)` hot-loads a finished job's model."""

    def __init__(self, store: Store, data_dir: Path, base_targets: Callable[[], dict[str, str]],
                 on_success: Callable[[dict[str, Any]], None], settings: RunnerSettings | None = None) -> None:
        self.store, self.data_dir = store, data_dir
        self.base_targets, self.on_success = base_targets, on_success
        self.settings = settings or RunnerSettings()
        self.children: dict[str, _Child] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="tunecraft-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the runner; running children checkpoint and exit (their jobs resume on restart)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=KILL_AFTER_S)
        for child in list(self.children.values()):
            self._signal(child)
        for child in list(self.children.values()):
            try:
                child.proc.wait(timeout=KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                child.proc.kill()
            child.log.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def _recover(self) -> None:
        """Jobs left running by a server that died: queue them again, to resume."""
        for job in self.store.jobs_in("running"):
            resumable = bool(rundir.complete_checkpoints(Path(job["run_dir"])))
            self.store.update_job(job["id"], status="queued", resume=int(resumable) or job["resume"])
            self.store.add_event(job["id"], f"recovered:{time.time():.3f}",
                                 "The server restarted during training; the job resumes from its last checkpoint"
                                 if resumable else "The server restarted during training; the job starts again")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # never let one bad job stop every other job
                self._log_internal(exc)
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _log_internal(self, exc: Exception) -> None:
        import traceback

        (self.data_dir / "runner-errors.log").open("a", encoding="utf-8").write(
            f"{time.ctime()}: {''.join(traceback.format_exception(exc))}\n")

    def _tick(self) -> None:
        for job in self.store.jobs_in("validating_files"):
            self._validate(job)
        for job_id, child in list(self.children.items()):
            self._mirror(job_id, child)
            self._handle_requests(job_id, child)
            if child.proc.poll() is not None:
                self._finish(job_id, child)
        running = len(self.children)
        for job in self.store.jobs_in("queued"):
            if running >= self.settings.max_parallel:
                break
            if job["id"] in self.children:  # still stopping after a pause: relaunch once it exits
                continue
            self._launch(job)
            running += 1

    # -- validation

    def _validate(self, job: dict[str, Any]) -> None:
        from tunecraft.data.check import check_data
        from tunecraft.errors import TunecraftError

        train = self.store.file(job["training_file"])
        val = self.store.file(job["validation_file"]) if job["validation_file"] else None
        self.store.add_event(job["id"], "validating", f"Validating training file: {job['training_file']}"
                             + (f" and validation file: {job['validation_file']}" if val else ""))
        try:
            if train is None or (job["validation_file"] and val is None):
                raise TunecraftError("a file of this job was deleted before it ran")
            report = check_data(Path(train["path"]), val=Path(val["path"]) if val else None,
                                model=self.base_targets().get(job["model"], job["model"]))
        except TunecraftError as exc:
            return self._fail(job["id"], "invalid_file", str(exc), "training_file")
        names = {train["path"]: train["filename"], **({val["path"]: val["filename"]} if val else {})}
        problems = [self._where(issue, names) for issue in report.issues if issue.severity == "error"]
        if problems:
            shown = problems[:MAX_ERROR_LINES] + ([f"... and {len(problems) - MAX_ERROR_LINES} more"]
                                                  if len(problems) > MAX_ERROR_LINES else [])
            message = f"The training data has {len(problems)} error(s):\n" + "\n".join(shown)
            return self._fail(job["id"], "invalid_training_file", message, "training_file")
        stats = [f"{f.examples} examples" for f in report.files]
        self.store.add_event(job["id"], "validated", f"Files validated ({', '.join(stats)}); the job is queued")
        self.store.transition(job["id"], ("validating_files",), status="queued")

    @staticmethod
    def _where(issue: Any, names: dict[str, str]) -> str:
        """`PATH:LINE: code: message` with the client's file name instead of the server path."""
        text = str(issue)
        for path, name in names.items():
            text = text.replace(path, name)
        return text

    # -- running

    def _launch(self, job: dict[str, Any]) -> None:
        targets = self.base_targets()
        train = self.store.file(job["training_file"])
        val = self.store.file(job["validation_file"]) if job["validation_file"] else None
        if job["model"] not in targets or train is None:
            return self._fail(job["id"], "invalid_job", "the base model or training file is gone", "model")
        cmd = train_command(job, targets[job["model"]], Path(train["path"]), Path(val["path"]) if val else None,
                            self.settings.job_settings)
        job_dir = Path(job["run_dir"]).parent
        job_dir.mkdir(parents=True, exist_ok=True)
        log = open(job_dir / "train.log", "ab")
        env = {**os.environ, "TUNECRAFT_SERVICE_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1",
               "COLUMNS": "120"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.children[job["id"]] = _Child(job["id"], proc, log)
        self.store.update_job(job["id"], status="running", requested=None)
        self.store.add_event(job["id"], f"started:{time.time():.3f}",
                             "Resuming from the last checkpoint" if job["resume"] else "Fine-tuning job started")

    def _handle_requests(self, job_id: str, child: _Child) -> None:
        job = self.store.job(job_id)
        if job is None:
            return
        if job["requested"] in ("cancel", "pause") and child.signalled_at is None:  # cancel or pause asked
            self._signal(child)
        elif child.signalled_at is not None and time.time() - child.signalled_at > KILL_AFTER_S:
            child.proc.kill()

    @staticmethod
    def _signal(child: _Child) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)  # the loop checkpoints, then exits 130
            child.signalled_at = time.time()

    def _finish(self, job_id: str, child: _Child) -> None:
        """The child exited: what it means depends on what the job was asked meanwhile."""
        self._mirror(job_id, child)
        child.log.close()
        del self.children[job_id]
        if self._stop.is_set():
            return  # the server is stopping: the job stays running and resumes on restart
        job = self.store.job(job_id)
        assert job is not None
        summary = rundir.read_summary(Path(job["run_dir"]))
        code = child.proc.returncode
        status = job["status"]
        if status == "cancelled":
            self.store.update_job(job_id, requested=None)
            return self.store.add_event(job_id, "cancelled", "The job was cancelled; its last checkpoint is kept")
        if code == 0 and summary.get("status") in ("finished", "early_stopped"):
            return self._succeed(job, summary)
        if status in ("paused", "queued"):  # paused (or resumed again while it was stopping)
            self.store.update_job(job_id, resume=1, requested=None)
            return self.store.add_event(job_id, f"paused:{time.time():.3f}", "The job was paused at a checkpoint")
        self._fail(job_id, "training_failed", self._failure_text(job, summary, code), None)

    def _failure_text(self, job: dict[str, Any], summary: dict[str, Any], code: int) -> str:
        if summary.get("status") == "failed" and summary.get("message"):
            return str(summary["message"])
        log = Path(job["run_dir"]).parent / "train.log"
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")] or lines[-5:]
        return (" ".join(errors) or f"training exited with code {code}").removeprefix("error: ")

    def _succeed(self, job: dict[str, Any], summary: dict[str, Any]) -> None:
        name = fine_tuned_name(job["model"], job["suffix"], job["id"])
        self.store.update_job(job["id"], status="succeeded", fine_tuned_model=name, finished_at=int(time.time()),
                              trained_tokens=summary.get("train_tokens_seen") or self._trained_tokens(job),
                              estimated_finish=None, requested=None)
        verdict = (summary.get("verdict") or {}).get("message")
        if verdict:
            self.store.add_event(job["id"], "verdict", f"Training curves: {verdict}")
        self.store.add_event(job["id"], "succeeded", f"The job has successfully completed: {name}")
        done = self.store.job(job["id"])
        assert done is not None
        self.on_success(done)

    def _fail(self, job_id: str, code: str, message: str, param: str | None) -> None:
        self.store.update_job(job_id, status="failed", finished_at=int(time.time()), estimated_finish=None,
                              error={"code": code, "message": message, "param": param}, requested=None)
        self.store.add_event(job_id, "failed", f"The job failed: {message}", level="error")

    def _trained_tokens(self, job: dict[str, Any]) -> int | None:
        rows = [r for r in rundir.read_metrics(Path(job["run_dir"])) if r.get("type") == "train"]
        return int(rows[-1].get("tokens_seen", 0)) if rows else None

    # -- mirroring the run directory

    def _mirror(self, job_id: str, child: _Child) -> None:
        run = Path(self.store.job(job_id)["run_dir"])  # type: ignore[index]
        self._mirror_events(job_id, run, child)
        self._mirror_metrics(job_id, run, child)

    def _mirror_events(self, job_id: str, run: Path, child: _Child) -> None:
        rows, child.events_offset = _new_rows(run / rundir.EVENTS, child.events_offset)
        for offset, row in rows:
            kind = row.get("event", "event")
            if kind in ("started", "segment", "refit") and row.get("total_steps"):  # the schedule's length
                child.total_steps = int(row["total_steps"])
            level = "error" if kind == "failed" else "info"
            # events.jsonl only grows: a line's byte offset names it across server restarts.
            self.store.add_event(job_id, f"run:{offset}", row.get("message", kind), level=level,
                                 created_at=int(row.get("time") or time.time()))
            if kind == "checkpoint" and row.get("step") is not None:
                self.store.add_checkpoint(job_id, int(row["step"]), self._metrics_at(run, int(row["step"])))

    def _mirror_metrics(self, job_id: str, run: Path, child: _Child) -> None:
        rows, child.metrics_offset = _new_rows(run / rundir.METRICS, child.metrics_offset)
        total = child.total_steps
        for _, row in rows:
            step = int(row.get("step", 0))
            if row.get("type") == "train":
                data = {"step": step, "train_loss": row.get("loss"), "total_steps": total,
                        "learning_rate": row.get("lr"), "tokens": row.get("tokens_seen")}
                self.store.add_event(job_id, f"metrics:train:{step}",
                                     f"Step {step}/{total or '?'}: training loss={row.get('loss', float('nan')):.4f}",
                                     type_="metrics", data=data)
                self._progress(job_id, row, step, total)
            elif row.get("type") == "eval":
                data = {"step": step, "valid_loss": row.get("val_loss"),
                        "valid_mean_token_accuracy": row.get("val_token_accuracy")}
                self.store.add_event(job_id, f"metrics:eval:{step}",
                                     f"Step {step}: validation loss={row.get('val_loss', float('nan')):.4f}, "
                                     f"token accuracy={row.get('val_token_accuracy', float('nan')):.3f}",
                                     type_="metrics", data=data)

    def _progress(self, job_id: str, row: dict[str, Any], step: int, total: int | None) -> None:
        fields: dict[str, Any] = {"trained_tokens": int(row.get("tokens_seen", 0))}
        elapsed = float(row.get("elapsed_s", 0.0))
        if total and step:
            fields["estimated_finish"] = int(time.time() + elapsed / step * (total - step))
        self.store.update_job(job_id, **fields)

    @staticmethod
    def _metrics_at(run: Path, step: int) -> dict[str, Any]:
        """The checkpoint's metrics: its step's training loss, the latest evaluation up to it."""
        metrics: dict[str, Any] = {"step": step}
        for row in rundir.read_metrics(run):
            if int(row.get("step", -1)) > step:
                continue
            if row.get("type") == "train":
                metrics["train_loss"] = row.get("loss")
            elif row.get("type") == "eval":
                metrics["valid_loss"] = row.get("val_loss")
                metrics["valid_mean_token_accuracy"] = row.get("val_token_accuracy")
        return metrics


def _new_rows(path: Path, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(byte offset, row) of the complete JSONL lines written since `offset`, and the new offset.

    Reading from the last offset keeps each poll proportional to what was appended. A file
    shorter than the offset was rewritten (a resume drops the metrics of steps it runs again):
    read it from the start; the store's keys make rows already recorded a no-op.
    """
    if not path.is_file():
        return [], offset
    if path.stat().st_size < offset:
        offset = 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
    rows, at = [], offset
    for raw in complete.splitlines(keepends=True):
        try:
            rows.append((at, json.loads(raw)))
        except json.JSONDecodeError:
            pass
        at += len(raw)
    return rows, offset + len(complete)
