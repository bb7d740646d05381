"""Issue #18 item 7: slow request preparation stays off the event loop; /health tells whether the worker lives.

Rendering and tokenizing a prompt near the body limit (1 MiB) takes about a second on these
CPUs, and so does the echo + logprobs offset fallback (every prefix of a long prompt decoded
again, when its tokens split characters). Done on the event loop, either froze every other
request, /health included, for that long; done in the thread pool, /health keeps answering.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import LoadedModel

BIG = "hello how can i help you today? " * 30_000  # ~0.96 MB of text, ~570k tokens


def _big_request(url: str, path: str, body: dict[str, Any], out: dict[str, Any]) -> None:
    start = time.perf_counter()
    out["response"] = httpx.post(f"{url}{path}", json=body, timeout=120)
    out["seconds"] = time.perf_counter() - start


def _health_latencies(url: str, until: threading.Event) -> list[float]:
    latencies = []
    with httpx.Client(timeout=60) as client:
        while not until.is_set():
            start = time.perf_counter()
            assert client.get(f"{url}/health").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.01)
    return latencies


def _check_responsive(url: str, path: str, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    out: dict[str, Any] = {}
    worker = threading.Thread(target=_big_request, args=(url, path, body, out))
    done = threading.Event()
    worker.start()
    watcher = threading.Thread(target=lambda: out.setdefault("lat", _health_latencies(url, done)))
    watcher.start()
    worker.join(timeout=120)
    done.set()
    watcher.join(timeout=60)
    assert out["response"].status_code == status, out["response"].text
    assert out["seconds"] > 0.4, "the request was too quick to show anything; make it larger"
    # On the event loop, one /health would have waited for the whole preparation.
    assert max(out["lat"]) < 0.5 * out["seconds"], (max(out["lat"]), out["seconds"])
    return out["response"].json()


def test_health_answers_while_a_huge_chat_prompt_is_tokenized(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings(max_body_bytes=2 << 20)))
    body = _check_responsive(srv.url, "/v1/chat/completions", {"model": "run-a", "messages": [{"role": "user", "content": BIG}]})
    # Too long for the tiny model's context: refused, but only after rendering and tokenizing it all.
    assert body["error"]["code"] == "context_length_exceeded"


def test_health_answers_while_a_huge_completion_prompt_is_tokenized(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings(max_body_bytes=2 << 20)))
    body = _check_responsive(srv.url, "/v1/completions", {"model": "run-a", "prompt": BIG, "max_tokens": 1})
    assert body["error"]["code"] == "context_length_exceeded"


def test_health_answers_while_echo_logprobs_offsets_fall_back(served: dict[str, Any], start_server: Any) -> None:
    """Token ids that split characters: each text_offset needs its own decode of the prefix (O(n^2))."""
    lm: LoadedModel = served["run-a"]
    # RoPE takes positions past the tiny config's 512; a long context is what makes the fallback slow.
    long = LoadedModel(**{**lm.__dict__, "name": "long", "context_length": 4096})
    split = lm.tokenizer("日本語", add_special_tokens=False)["input_ids"]  # byte tokens, no whole character
    assert lm.tokenizer.decode(split[:1]) == "\ufffd"
    srv = start_server(create_app({"long": long}, ServeSettings()))
    prompt = (split * 500)[:4095]
    body = _check_responsive(srv.url, "/v1/completions",
                             {"model": "long", "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 0}, status=200)
    assert len(body["choices"][0]["logprobs"]["text_offset"]) == len(prompt)


def test_health_is_503_when_the_worker_is_gone_and_requests_are_refused(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    assert httpx.get(f"{srv.url}/health").json()["worker_alive"] is True
    srv.app.state.scheduler.stop()  # the worker thread ends, as it would after a crash
    health = httpx.get(f"{srv.url}/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable" and health.json()["worker_alive"] is False
    # A request no worker would ever run is answered at once instead of hanging.
    resp = httpx.post(f"{srv.url}/v1/chat/completions", timeout=10,
                      json={"model": "run-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "worker_unavailable"
