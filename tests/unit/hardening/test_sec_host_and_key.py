"""Issue #18 item 3: a keyless server answers only loopback host names; an API key is never persisted.

DNS rebinding: a web page points a name it owns at 127.0.0.1, so the victim's browser reaches a
keyless local server, but it still sends the page's name as `Host`. The server (real uvicorn on
loopback) must answer such requests with a JSON error and serve loopback names as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tunecraft.config import build_config, dump_config, load_config
from tunecraft.serve.app import ServeSettings, create_app

LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]


def _get(url: str, host: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, headers={"Host": host, **kw.pop("headers", {})}, timeout=30, **kw)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.rebind.example", "", "localhost.evil.example"])
def test_keyless_server_refuses_other_host_names(served: dict[str, Any], start_server: Any, host: str) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    for path in ("/v1/models", "/health"):
        resp = _get(f"{srv.url}{path}", host)
        assert resp.status_code == 421, (path, resp.text)
        error = resp.json()["error"]
        assert error["code"] == "invalid_host" and "--api-key" in error["message"]
    chat = httpx.post(f"{srv.url}/v1/chat/completions", headers={"Host": host}, timeout=30,
                      json={"model": "run-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert chat.status_code == 421


def test_keyless_server_serves_loopback_names_with_or_without_port(served: dict[str, Any], start_server: Any) -> None:
    srv = start_server(create_app(served, ServeSettings()))
    for name in LOOPBACK_NAMES:
        for host in (name, f"{name}:{srv.port}"):
            resp = _get(f"{srv.url}/v1/models", host)
            assert resp.status_code == 200, (host, resp.text)
    assert httpx.get(f"{srv.url}/health").status_code == 200  # what clients send by default


def test_with_an_api_key_any_host_name_is_served(served: dict[str, Any], start_server: Any) -> None:
    """Behind a key the server may sit under any name (a proxy, a LAN name): the key guards it."""
    srv = start_server(create_app(served, ServeSettings(api_key="k")))
    resp = _get(f"{srv.url}/v1/models", "models.internal.example", headers={"Authorization": "Bearer k"})
    assert resp.status_code == 200
    assert _get(f"{srv.url}/v1/models", "models.internal.example").status_code == 401


def test_dumped_config_never_holds_the_api_key(tmp_path: Path) -> None:
    cfg = build_config(values={"serve.api_key": "sk-very-secret-123", "serve.port": 9001})
    assert cfg.serve.api_key == "sk-very-secret-123"
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    text = path.read_text(encoding="utf-8")
    assert "sk-very-secret-123" not in text and "api_key" not in text
    again = load_config(path)
    assert again.serve.port == 9001 and again.serve.api_key is None
    assert "sk-very-secret-123" not in repr(cfg)


def test_run_directory_config_never_holds_the_api_key(tmp_path: Path) -> None:
    from tunecraft.rundir import CONFIG, write_config

    write_config(tmp_path, build_config(values={"serve.api_key": "sk-run-dir-secret"}))
    assert "sk-run-dir-secret" not in (tmp_path / CONFIG).read_text(encoding="utf-8")
