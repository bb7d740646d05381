"""Issue #18 item 5: request limits are refused with a 400, and a 429 leaves nothing of itself running.

Real uvicorn on loopback. A completions request with more prompts than the queue has room for
used to get a 429 while its prompts that did fit kept running; now a request's prompts are
queued all together or not at all. Prompts per request, max_tokens (a server setting) and stop
strings (count and length) are capped, and over-the-cap requests are refused, not truncated.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tunecraft.serve.app import ServeSettings, create_app


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=30).json()


def _wait(url: str, ok: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.time() + timeout
    while True:
        health = _health(url)
        if ok(health) or time.time() > deadline:
            return health
        time.sleep(0.02)


def _stream_in_background(url: str, body: dict[str, Any], stop: threading.Event) -> threading.Thread:
    """A streaming chat request held open until `stop` is set (closing it cancels its job)."""

    def run() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as resp:
            for _ in resp.iter_lines():
                if stop.is_set():
                    return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_refused_request_leaves_none_of_its_prompts_queued(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings(max_queue=2, max_batch=1)))
    long = {"model": "run-a", "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "ignore_eos": True}
    stop = threading.Event()
    threads = [_stream_in_background(srv.url, long, stop)]
    try:
        assert _wait(srv.url, lambda h: h["running"] == 1)["queued"] == 0  # first one decoding
        threads.append(_stream_in_background(srv.url, long, stop))
        assert _wait(srv.url, lambda h: h["queued"] == 1)["queued"] == 1  # second one waiting: one slot left
        resp = _post(srv.url, "/v1/completions", {"model": "run-a", "prompt": ["a b", "c d"], "max_tokens": 50})
        assert resp.status_code == 429 and resp.json()["error"]["type"] == "server_overloaded"
        health = _health(srv.url)
        assert health["queued"] == 1 and health["running"] == 1  # nothing of the refused request
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    after = _wait(srv.url, lambda h: h["queued"] == 0 and h["running"] == 0)
    assert after["completed"] == 0  # the two streams were cancelled; nothing else ever ran


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"prompt": ["x"] * 33}, "prompt"),  # default: 32 prompts per request
        ("/v1/chat/completions", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),  # default: 4
        ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": "x", "stop": "s" * 257}, "stop"),  # default: 256 characters
        ("/v1/chat/completions", {"messages": USER, "stop": ["ok", "s" * 257]}, "stop"),
    ],
)
def test_over_the_default_limits_is_400_not_truncated(
    served: dict[str, Any], start_server: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    resp = _post(srv.url, path, {"model": "run-a", "max_tokens": 1, **extra})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert _health(srv.url)["completed"] == 0  # refused before anything was queued


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 65}, "max_tokens"),
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 65}, "max_tokens"),
        ("/v1/chat/completions", {"messages": USER, "max_completion_tokens": 65}, "max_completion_tokens"),
    ],
)
def test_max_tokens_over_the_server_setting_is_400(
    served: dict[str, Any], start_server: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    """65 tokens fit this model's context (512); the server's own cap (64) refuses them."""
    srv = start_server(create_app(served, ServeSettings(max_tokens_limit=64)))
    resp = _post(srv.url, path, {"model": "run-a", **extra})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param and "at most 64" in resp.json()["error"]["message"]


def test_at_the_limits_requests_are_served(served: dict[str, Any], start_server: Any) -> None:
    settings = ServeSettings(max_prompts=4, max_tokens_limit=64, max_stop=4, max_stop_chars=32)
    srv = start_server(create_app(served, settings))
    resp = _post(srv.url, "/v1/completions", {"model": "run-a", "prompt": ["a", "b", "c", "d"], "max_tokens": 2,
                                              "stop": ["w", "x", "y", "z" * 32]})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 4


def test_more_prompts_than_the_queue_can_ever_hold_is_400(served: dict[str, Any], start_server: Any) -> None:
    """A request that could never fit is not told to retry (429) but to split itself."""
    srv = start_server(create_app(served, ServeSettings(max_queue=2, max_prompts=32)))
    resp = _post(srv.url, "/v1/completions", {"model": "run-a", "prompt": ["a", "b", "c"], "max_tokens": 2})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    assert "at most 2 prompts" in resp.json()["error"]["message"]
