"""A bounded request queue and the one worker thread that runs generation for the server.

Why one worker: the models share weights and (for LoRA) an adapter switch, and on a CPU one
forward pass already uses every core; running requests one batch at a time is both correct and
as fast as the hardware allows. Waiting generation jobs for the same model are decoded together
as one left-padded batch (each row keeps its own sampling params and seed), so N concurrent
streams cost about one decode loop, not N.

The queue is bounded: `submit_all` raises `QueueFullError` (the API answers 429) instead of letting
requests pile up, and takes a request's prompts all together or not at all, so a refused request
leaves nothing of itself running. Each job carries a `cancel` event (set when its client
disconnects) that the decode loop checks between tokens, so an abandoned stream stops using the
model at once. A job whose row fails (a bad seed, say) fails alone; its batch goes on.
A `classify` job (a chat request to a closed-label model) is answered with a `LabelAnswer` and its
label's token events; such jobs batch with each other only.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunecraft.serve.engine import (
    LoadedModel,
    SamplingParams,
    TokenEvent,
    classify,
    generate_events,
    label_events,
    prompt_logprobs,
)


class QueueFullError(Exception):
    """The queue has no room for the submitted jobs."""


class WorkerDeadError(Exception):
    """The generation worker is not running (stopped, or it crashed): nothing would be served."""


@dataclass
class Job:
    """One prompt to complete. `emit` is called from the worker thread with, in order:
    a `PromptLogprobs` (when `score` is set) or a `LabelAnswer` (when `classify` is set),
    `list[TokenEvent]` batches, then `None` (done) or an `Exception` (failed)."""

    model: LoadedModel
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[Any], None]
    score: bool = False  # compute prompt log-probs first (completions with echo + logprobs)
    classify: bool = False  # answer with a label of the model's label set (constrained decoding)
    reject: bool = True  # classify: apply the model's reject threshold
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
        self.submit_all([job])

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue every job or none (raises QueueFullError / WorkerDeadError and queues nothing)."""
        with self._cond:
            # Jobs may queue before start() (they run once it starts), never after the worker ended.
            if self._stop or (self._thread.ident is not None and not self._thread.is_alive()):
                raise WorkerDeadError("the generation worker is not running; restart the server")
            if len(self._pending) + len(jobs) > self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {len(self._pending)} requests are already waiting "
                    f"(max_queue={self.max_queue}) and this one needs room for {len(jobs)}; retry shortly"
                )
            self._pending.extend(jobs)
            self._cond.notify()

    def alive(self) -> bool:
        """The worker thread is running and has not been told to stop."""
        return self._thread.is_alive() and not self._stop

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
                    if job.model is first.model and not job.score and job.classify == first.classify:
                        self._pending.remove(job)
                        batch.append(job)
            self._running = len(batch)
            return batch

    def _loop(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                live = [job for job in batch if not job.cancel.is_set()]
                for job in batch:
                    if job.cancel.is_set():
                        self._finish(job, None, cancelled=True)
                if live:
                    self._run(live)
                with self._cond:
                    self._running = 0
        finally:
            self._fail_pending()

    def _fail_pending(self) -> None:
        """The worker is leaving (stopped or crashed): answer every waiting job instead of leaving it hanging."""
        with self._cond:
            self._stop = True  # alive() turns false even before the thread object ends
            left, self._pending = list(self._pending), deque()
        for job in left:
            self._finish(job, WorkerDeadError("the server stopped before this request ran"))

    def _run(self, batch: list[Job]) -> None:
        try:
            if batch[0].classify:
                self._classify(batch)
                return
            if batch[0].score:
                job = batch[0]
                job.emit(prompt_logprobs(job.model, job.prompt, top=max(job.params.logprobs or 0, 1)))
            to_generate = [job for job in batch if job.params.max_tokens > 0]
            cancelled: set[int] = set()
            failed: dict[int, Exception] = {}
            if to_generate:
                cancelled, failed = self._generate(to_generate)
            for i, job in enumerate(to_generate):
                self._finish(job, failed.get(i), cancelled=i in cancelled)
            for job in batch:
                if job.params.max_tokens <= 0:
                    self._finish(job, None)
        except Exception as exc:  # report to every waiting client; the worker keeps serving
            for job in batch:
                self._finish(job, exc)

    def _classify(self, batch: list[Job]) -> None:
        """Score the label set for the whole batch; each job gets its answer, then its tokens."""
        model = batch[0].model
        answers = classify(model, [job.prompt for job in batch], [job.params for job in batch],
                           [job.reject for job in batch])
        for job, answer in zip(batch, answers):
            job.emit(answer)
            job.emit(label_events(model, answer, 0, job.params.logprobs))
            self._finish(job, None)

    def _generate(self, batch: list[Job]) -> tuple[set[int], dict[int, Exception]]:
        """Decode the batch, routing each row's events to its job; returns cancelled and failed rows."""
        model = batch[0].model
        cancelled: set[int] = set()
        failed: dict[int, Exception] = {}
        events_iter = generate_events(
            model,
            [job.prompt for job in batch],
            [job.params for job in batch],
            cancelled=lambda row: batch[row].cancel.is_set(),
        )
        for events in events_iter:
            by_row: dict[int, list[TokenEvent]] = {}
            for ev in events:
                if ev.error is not None:  # this row alone failed: its job gets the error at the end
                    failed[ev.row] = ev.error
                    continue
                by_row.setdefault(ev.row, []).append(ev)
                if ev.finish_reason == "cancelled":
                    cancelled.add(ev.row)
            for row, evs in by_row.items():
                if row not in cancelled:
                    batch[row].emit(evs)
        return cancelled, failed

    def _finish(self, job: Job, error: Exception | None, cancelled: bool = False) -> None:
        with self._cond:
            if error is not None:
                self._stats.failed += 1
            elif cancelled:
                self._stats.cancelled += 1
            else:
                self._stats.completed += 1
        job.emit(error)
