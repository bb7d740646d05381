"""A bounded request queue and the one worker thread that runs generation for the server.

Why one worker: the models share weights and (for LoRA) an adapter switch, and on a CPU one
forward pass already uses every core; running requests one batch at a time is both correct and
as fast as the hardware allows. Waiting generation jobs for the same model are decoded together
as one left-padded batch (each row keeps its own sampling params and seed), so N concurrent
streams cost about one decode loop, not N.

The queue is bounded: `submit` raises `QueueFullError` (the API answers 429) instead of letting
requests pile up. Each job carries a `cancel` event (set when its client disconnects) that the
decode loop checks between tokens, so an abandoned stream stops using the model at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunecraft.serve.engine import LoadedModel, SamplingParams, TokenEvent, generate_events, prompt_logprobs


class QueueFullError(Exception):
    """The queue holds `max_queue` waiting jobs already."""


@dataclass
class Job:
    """One prompt to complete. `emit` is called from the worker thread with, in order:
    a `PromptLogprobs` (when `score` is set), `list[TokenEvent]` batches, then `None` (done)
    or an `Exception` (failed)."""

    model: LoadedModel
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Any], None]
    score: bool = False  # compute prompt log-probs first (completions with echo + logprobs)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class SchedulerStats:
    queued: int = 0
    running: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0


class Scheduler:
    """Owns the worker thread; `submit` is safe to call from any thread."""

    def __init__(self, max_queue: int = 64, max_batch: int = 8) -> None:
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running = 0
        self._stats = SchedulerStats()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="tunecraft-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            for job in self._pending:
                job.cancel.set()
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {len(self._pending)} requests are already waiting "
                    f"(max_queue={self.max_queue}); retry shortly"
                )
            self._pending.append(job)
            self._cond.notify()

    def stats(self) -> SchedulerStats:
        with self._cond:
            s = self._stats
            return SchedulerStats(len(self._pending), self._running, s.completed, s.cancelled, s.failed)

    # -- worker

    def _take_batch(self) -> list[Job] | None:
        """The oldest job plus other waiting plain-generation jobs for the same model."""
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            first = self._pending.popleft()
            batch = [first]
            if not first.score:
                for job in list(self._pending):
                    if len(batch) >= self.max_batch:
                        break
                    if job.model is first.model and not job.score:
                        self._pending.remove(job)
                        batch.append(job)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            live = [job for job in batch if not job.cancel.is_set()]
            for job in batch:
                if job.cancel.is_set():
                    self._finish(job, None, cancelled=True)
            if live:
                self._run(live)
            with self._cond:
                self._running = 0

    def _run(self, batch: list[Job]) -> None:
        try:
            if batch[0].score:
                job = batch[0]
                job.emit(prompt_logprobs(job.model, job.prompt, top=max(job.params.logprobs or 0, 1)))
            to_generate = [job for job in batch if job.params.max_tokens > 0]
            cancelled: set[int] = set()
            if to_generate:
                cancelled = self._generate(to_generate)
            for i, job in enumerate(to_generate):
                self._finish(job, None, cancelled=i in cancelled)
            for job in batch:
                if job.params.max_tokens <= 0:
                    self._finish(job, None)
        except Exception as exc:  # report to every waiting client; the worker keeps serving
            for job in batch:
                self._finish(job, exc)

    def _generate(self, batch: list[Job]) -> set[int]:
        """Decode the batch, routing each row's events to its job; returns cancelled rows."""
        model = batch[0].model
        cancelled: set[int] = set()
        events_iter = generate_events(
            model,
            [job.prompt for job in batch],
            [job.params for job in batch],
            cancelled=lambda row: batch[row].cancel.is_set(),
        )
        for events in events_iter:
            by_row: dict[int, list[TokenEvent]] = {}
            for ev in events:
                by_row.setdefault(ev.row, []).append(ev)
                if ev.finish_reason == "cancelled":
                    cancelled.add(ev.row)
            for row, evs in by_row.items():
                if row not in cancelled:
                    batch[row].emit(evs)
        return cancelled

    def _finish(self, job: Job, error: Exception | None, cancelled: bool = False) -> None:
        with self._cond:
            if error is not None:
                self._stats.failed += 1
            elif cancelled:
                self._stats.cancelled += 1
            else:
                self._stats.completed += 1
        job.emit(error)
