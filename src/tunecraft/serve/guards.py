"""ASGI guards that run around the API before any route code: host names, API key, body size.

They are plain ASGI middleware so that none depends on a route remembering to check:

- `LoopbackHostMiddleware` (keyless servers only): a web page can point a DNS name it owns at
  127.0.0.1 ("DNS rebinding") and then talk to a keyless local server from the victim's
  browser. The browser still sends the page's own name in `Host`, so answering only requests
  addressed to a loopback name (localhost, 127.0.0.1, [::1], any port) closes that door.
- `APIKeyMiddleware`: every route but /health (and static pages that hold no data) needs
  `Authorization: Bearer KEY`.
- `BodyLimitMiddleware`: the whole body is read here, up to the limit, before the app sees it,
  so a chunked body over the limit is a 413 too (raising from inside the app's `receive` would
  reach FastAPI's body parser, which turns any error into a 400).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import tempfile
from typing import Any

from tunecraft.serve.protocol import error_body

Headers = list[tuple[bytes, bytes]]


async def send_json(send: Any, status: int, body: dict[str, Any], headers: Headers | None = None) -> None:
    """A complete JSON response sent straight through ASGI (no app involved)."""
    raw = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": raw})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    return dict(scope.get("headers", [])).get(name)


# ----------------------------------------------------------------------------- Host header


def _split_host(value: str) -> tuple[str, str]:
    """`name:port` / `[v6]:port` / `name` -> (name, port or "")."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return "", ""
        name, rest = value[1:end], value[end + 1 :]
        return (name, rest[1:]) if rest.startswith(":") else (name, rest)
    name, _, port = value.partition(":")
    return name, port


def is_loopback_host(value: str) -> bool:
    """A Host header naming this machine's loopback: localhost or a loopback IP literal, any port."""
    name, port = _split_host(value.strip().lower())
    if port and not (port.isdigit() and len(port) <= 5):
        return False
    if name == "localhost":
        return True
    if ":" in name and not value.strip().startswith("["):
        return False  # an IPv6 literal must be bracketed in Host
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # any other name may resolve anywhere: that is the rebinding trick
        return False


class LoopbackHostMiddleware:
    """Answer 421 to requests whose Host is not a loopback name (installed when no API key is set)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = (_header(scope, b"host") or b"").decode("latin-1")
        if not is_loopback_host(host):
            body = error_body(
                f"this server answers only requests addressed to localhost, 127.0.0.1 or [::1] "
                f"(got Host: {host[:100]!r}). To serve other host names, start it with --api-key KEY.",
                "invalid_request_error",
                code="invalid_host",
            )
            return await send_json(send, 421, body)
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- API key


class APIKeyMiddleware:
    """Every route but /health needs `Authorization: Bearer KEY` (compared in constant time).

    `public` names more paths that need no key: static files holding no data (the dashboard's
    page and scripts, which ask for the key and send it with every API call they make).
    """

    def __init__(self, app: Any, api_key: str, public: frozenset[str] = frozenset()) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()
        self.public = frozenset({"/health", *public})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.public:
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            body = error_body("missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error", code="invalid_api_key")
            return await send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- body size


class BodyLimitMiddleware:
    """Answer 413 for bodies over `max_bytes`, by Content-Length or once the streamed body passes it.

    `large` gives some paths (uploads) a higher limit of their own; their bodies are spooled to a
    temporary file rather than held in memory while they are counted.
    """

    def __init__(self, app: Any, max_bytes: int, large: dict[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.large = app, max_bytes, large or {}

    def _too_large(self, limit: int) -> dict[str, Any]:
        return error_body(
            f"request body exceeds {limit} bytes; send a shorter prompt or a smaller file", "invalid_request_error",
            code="request_too_large",
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.large.get(scope.get("path", ""), self.max_bytes)
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await send_json(send, 413, self._too_large(limit))
        spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)  # small bodies stay in memory
        try:
            size, more = 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # the client left mid-body: no one to answer
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await send_json(send, 413, self._too_large(limit))
                spool.write(chunk)
                more = message.get("more_body", False)
            spool.seek(0)
            await self.app(scope, _replay(spool, receive), send)
        finally:
            spool.close()


def _replay(spool: Any, receive: Any, chunk: int = 1 << 20) -> Any:
    """A `receive` that hands the counted body over (in chunks), then the real channel (disconnects)."""
    done = False

    async def replayed() -> dict[str, Any]:
        nonlocal done
        if not done:
            data = spool.read(chunk)
            more = len(data) == chunk
            done = not more
            return {"type": "http.request", "body": data, "more_body": more}
        return await receive()

    return replayed
