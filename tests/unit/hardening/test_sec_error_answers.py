"""Issue #18 item 6: every error is an OpenAI-style JSON object, and none carries the server's internals.

Real uvicorn on loopback, real failures: a model whose chat template raises (an exception no
handler expects), a model placed on the meta device (generation fails in the worker), a chunked
body over the limit, and JSON text holding a lone surrogate.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from tiny import build_model_dir

from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import LoadedModel, load_target

SECRET = "internal-detail-7f3a"  # text only the server may know; no answer may carry it
USER = [{"role": "user", "content": "hi"}]


def _is_error_object(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.fixture(scope="module")
def broken_template_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A real model whose chat template raises while rendering (jinja's TemplateError)."""
    out = build_model_dir(tmp_path_factory.mktemp("broken") / "m", chat_template="{{ raise_exception('" + SECRET + "') }}")
    return load_target(str(out), name="broken")


def test_unexpected_exception_is_a_json_500_without_internals(broken_template_model: LoadedModel, start_server: Any) -> None:
    srv = start_server(create_app({"broken": broken_template_model}, ServeSettings()))
    resp = httpx.post(f"{srv.url}/v1/chat/completions", json={"model": "broken", "messages": USER}, timeout=30)
    assert resp.status_code == 500
    error = _is_error_object(resp)
    assert error["type"] == "server_error" and SECRET not in resp.text and "TemplateError" not in resp.text
    assert httpx.get(f"{srv.url}/health").status_code == 200  # the server goes on


def test_generation_failure_names_no_internals(served: dict[str, Any], start_server: Any) -> None:
    lm = served["run-a"]
    meta = LoadedModel(**{**lm.__dict__, "name": "meta", "device": torch.device("meta")})  # inputs land on meta: forward fails
    srv = start_server(create_app({"meta": meta}, ServeSettings()))
    for stream in (False, True):
        resp = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30,
                          json={"model": "meta", "messages": USER, "max_tokens": 3, "stream": stream})
        if not stream:
            assert resp.status_code == 500
            body = _is_error_object(resp)
        else:
            data = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
            body = data[-1]["error"]
        assert body["type"] == "server_error" and "log" in body["message"]
        assert "meta" not in body["message"] and "Error" not in body["message"]


def _chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    body = json.dumps({"model": "run-a", "messages": [{"role": "user", "content": "x" * total}]}).encode()
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_chunked_body_over_the_limit_is_413(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings(max_body_bytes=32 * 1024)))
    resp = httpx.post(f"{srv.url}/v1/chat/completions", content=_chunks(40 * 1024), timeout=30,
                      headers={"content-type": "application/json"})
    assert "content-length" not in resp.request.headers  # sent chunked: the size was not announced
    assert resp.status_code == 413
    assert _is_error_object(resp)["code"] == "request_too_large"


def test_chunked_body_under_the_limit_is_served(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings(max_body_bytes=32 * 1024)))
    body = b"".join(_chunks(100))
    resp = httpx.post(f"{srv.url}/v1/chat/completions", timeout=30, headers={"content-type": "application/json"},
                      content=iter([body[:10], body[10:]]))
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", '{"model": "run-a", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
        ("/v1/chat/completions",
         '{"model": "run-a", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
         "messages.0.content.0.text"),
        ("/v1/completions", '{"model": "run-a", "prompt": "\\ud800", "max_tokens": 2}', "prompt"),
        ("/v1/completions", '{"model": "run-a", "prompt": ["ok", "\\ud800"], "max_tokens": 2}', "prompt.1"),
        ("/v1/completions", '{"model": "run-a", "prompt": "ok", "stop": "\\ud800", "max_tokens": 2}', "stop"),
    ],
)
def test_lone_surrogate_is_400(served: dict[str, Any], start_server: Any, path: str, body: str, param: str) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    resp = httpx.post(f"{srv.url}{path}", content=body.encode(), headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 400, resp.text
    error = _is_error_object(resp)
    assert error["param"] == param and "surrogate" in error["message"]


def test_a_proper_surrogate_pair_is_fine(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    body = '{"model": "run-a", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'
    resp = httpx.post(f"{srv.url}/v1/chat/completions", content=body.encode(), headers={"content-type": "application/json"}, timeout=30)
    assert resp.status_code == 200, resp.text
