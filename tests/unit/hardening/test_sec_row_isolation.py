"""Issue #18 item 4: out-of-range values are a 400 naming the field; one bad row fails only itself.

A seed torch cannot take (2**64) used to raise inside the batch and fail every request decoded
with it. The API now refuses it up front; the engine and the scheduler (for callers that reach
them directly) end only that row, while its batch neighbours finish exactly as they would alone.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import GenerationError, SamplingParams, generate_events
from tunecraft.serve.scheduler import Job, Scheduler

BAD_SEED = 2**64
CHAT = [{"role": "user", "content": "refund please"}]


@pytest.mark.parametrize("seed", [BAD_SEED, -(2**63) - 1, 10**30])
def test_api_refuses_out_of_range_seed_with_param(served: dict[str, Any], start_server: Any, seed: int) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    chat = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30,
                      json={"model": "run-a", "messages": CHAT, "max_tokens": 4, "temperature": 1, "seed": seed})
    comp = httpx.post(f"{srv.url}/v1/completions", timeout=30,
                      json={"model": "run-a", "prompt": "hi", "max_tokens": 4, "temperature": 1, "seed": seed})
    for resp in (chat, comp):
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "seed" and resp.json()["error"]["type"] == "invalid_request_error"


def test_engine_fails_only_the_bad_row(served: dict[str, Any]) -> None:
    lm = served["run-a"]
    prompts = [lm.chat_prompt(CHAT)] * 3
    good = SamplingParams(max_tokens=6, temperature=1.0, seed=11, ignore_eos=True)
    rows = [good, SamplingParams(max_tokens=6, temperature=1.0, seed=BAD_SEED), good]
    tokens: dict[int, list[int]] = {0: [], 1: [], 2: []}
    errors: dict[int, Exception] = {}
    for events in generate_events(lm, prompts, rows):
        for ev in events:
            if ev.error is not None:
                errors[ev.row] = ev.error
            elif ev.token_id is not None:
                tokens[ev.row].append(ev.token_id)
    alone = [ev.token_id for evs in generate_events(lm, prompts[:1], [good]) for ev in evs]
    assert set(errors) == {1} and isinstance(errors[1], GenerationError) and "seed" in str(errors[1])
    assert tokens[0] == tokens[2] == alone and len(alone) == 6 and tokens[1] == []


class _Inbox:
    """Collects what the worker emits for one job, from the worker thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.done = threading.Event()

    def emit(self, item: Any) -> None:
        self.items.append(item)
        if item is None or isinstance(item, Exception):
            self.done.set()


def test_scheduler_fails_only_the_bad_job_of_a_batch(served: dict[str, Any]) -> None:
    lm = served["run-a"]
    ids = lm.chat_prompt(CHAT)
    scheduler = Scheduler(max_queue=8, max_batch=8)
    inboxes = [_Inbox() for _ in range(3)]
    seeds = [5, BAD_SEED, 6]
    jobs = [Job(lm, ids, SamplingParams(max_tokens=5, temperature=1.0, seed=s, ignore_eos=True), box.emit)
            for s, box in zip(seeds, inboxes)]
    scheduler.submit_all(jobs)  # queued before the worker starts: all three decode as one batch
    scheduler.start()
    try:
        assert all(box.done.wait(60) for box in inboxes)
    finally:
        scheduler.stop()
    bad = inboxes[1].items
    assert len(bad) == 1 and isinstance(bad[0], GenerationError)
    for box in (inboxes[0], inboxes[2]):
        assert box.items[-1] is None  # completed, not failed
        assert sum(1 for batch in box.items[:-1] for ev in batch if ev.token_id is not None) == 5
    stats = scheduler.stats()
    assert (stats.completed, stats.failed) == (2, 1)
