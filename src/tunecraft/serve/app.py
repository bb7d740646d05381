"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`.

Request handlers only translate between HTTP and the engine: they build prompt ids, check the
token budget, and hand a `Job` to the `Scheduler`, whose worker thread feeds the job's events
back through an asyncio queue. Guards run as plain ASGI middleware around the app: a bearer key
(every route but /health) and a request-body limit (413), so neither depends on a route's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunecraft.errors import TunecraftError
from tunecraft.serve.engine import LoadedModel, PromptLogprobs, SamplingParams, TokenEvent, token_strings_and_offsets
from tunecraft.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body
from tunecraft.serve.scheduler import Job, QueueFullError, Scheduler


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20  # 1 MiB of JSON is far beyond any prompt a small model can take
    max_queue: int = 64  # waiting requests before answering 429
    max_batch: int = 8  # requests decoded together
    default_max_tokens: int = 512  # when a chat request gives no max_tokens
    disconnect_poll_s: float = 0.5  # how often a non-streaming request checks its client


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


# ----------------------------------------------------------------------------- ASGI guards


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": raw})


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 for bodies over `max_bytes`, by Content-Length or while the body streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> dict[str, Any]:
        return error_body(f"request body exceeds {self.max_bytes} bytes", "invalid_request_error", code="request_too_large")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, self._too_large())
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _send_json(send, 413, self._too_large())


class APIKeyMiddleware:
    """Every route but /health needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers", [])).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            body = error_body("missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error", code="invalid_api_key")
            return await _send_json(send, 401, body, [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------- job plumbing


class _Channel:
    """Carries a job's events from the worker thread into the request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone when the server shut down mid-job
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _lookup(models: dict[str, LoadedModel], name: str) -> LoadedModel:
    if name not in models:
        raise APIError(404, f"model {name!r} is not served here; available: {', '.join(models)}", param="model", code="model_not_found")
    return models[name]


def _budget(lm: LoadedModel, n_prompt: int, requested: int | None, default: int, param: str) -> int:
    """max_tokens for a request: the requested number when it fits the context, else a 400."""
    room = lm.context_length - n_prompt
    if room <= 0 and (requested is None or requested > 0):
        raise APIError(400, f"the prompt has {n_prompt} tokens; this model's context length is {lm.context_length}", param=param, code="context_length_exceeded")
    if requested is None:
        return min(default, room)
    if requested > room:
        raise APIError(
            400,
            f"max_tokens={requested} is too large: this model's context length is {lm.context_length} "
            f"tokens and the prompt uses {n_prompt}, so max_tokens can be at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def _submit(scheduler: Scheduler, job: Job) -> None:
    try:
        scheduler.submit(job)
    except QueueFullError as exc:
        raise APIError(429, str(exc), "server_overloaded", code="queue_full") from None


async def _next(channel: _Channel, request: Request | None, job: Job, poll_s: float) -> Any:
    """The next item from the worker; cancels the job if a non-streaming client went away."""
    while True:
        try:
            return await asyncio.wait_for(channel.queue.get(), timeout=poll_s)
        except asyncio.TimeoutError:
            if request is not None and await request.is_disconnected():
                job.cancel.set()


@dataclass
class _Collected:
    text: str = ""
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    top: list[dict[int, float]] | None = None
    prompt: PromptLogprobs | None = None
    finish_reason: str = "length"

    def add(self, ev: TokenEvent) -> None:
        self.text += ev.text
        if ev.token_id is not None:
            self.token_ids = (self.token_ids or []) + [ev.token_id]
            self.logprobs = (self.logprobs or []) + [ev.logprob if ev.logprob is not None else 0.0]
            self.top = (self.top or []) + [ev.top_logprobs or {}]
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason


async def _collect(channel: _Channel, request: Request, job: Job, poll_s: float) -> _Collected:
    out = _Collected()
    while (item := await _next(channel, request, job, poll_s)) is not None:
        if isinstance(item, Exception):
            raise item
        if isinstance(item, PromptLogprobs):
            out.prompt = item
            continue
        for ev in item:
            out.add(ev)
    return out


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _engine_error(exc: Exception) -> APIError:
    if isinstance(exc, TunecraftError):
        return APIError(400, str(exc))
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")


# ----------------------------------------------------------------------------- chat


def _chat_job(models: dict[str, LoadedModel], body: ChatCompletionRequest, settings: ServeSettings, channel: _Channel) -> Job:
    lm = _lookup(models, body.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        ids = lm.chat_prompt(messages)
    except TunecraftError as exc:
        raise APIError(400, str(exc), param="messages") from None
    max_tokens = _budget(lm, len(ids), body.requested_max_tokens(), settings.default_max_tokens, "messages")
    params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed, body.stop_list(), body.ignore_eos)
    return Job(lm, ids, params, channel.emit)


def _chat_chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None, usage: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        chunk["usage"] = None  # OpenAI sends usage: null on every chunk but the last when asked for usage
    return chunk


async def _chat_stream(channel: _Channel, job: Job, model: str, include_usage: bool) -> AsyncIterator[str]:
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    n_out, finish = 0, "length"
    try:
        yield _sse(_chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, None, include_usage))
        while (item := await channel.queue.get()) is not None:
            if isinstance(item, Exception):
                yield _sse(error_body(str(_engine_error(item).message), "server_error"))
                return
            for ev in item:
                n_out += ev.token_id is not None
                finish = ev.finish_reason or finish
                if ev.text:
                    yield _sse(_chat_chunk(cid, created, model, {"content": ev.text}, None, include_usage))
        yield _sse(_chat_chunk(cid, created, model, {}, finish, include_usage))
        if include_usage:
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": _usage(len(job.prompt), n_out)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # the client went away (or we are done): stop generating for it


async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
    state = request.app.state
    channel = _Channel()
    job = _chat_job(state.models, body, state.settings, channel)
    _submit(state.scheduler, job)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chat_stream(channel, job, body.model, include_usage), media_type="text/event-stream")
    try:
        out = await _collect(channel, request, job, state.settings.disconnect_poll_s)
    except Exception as exc:
        raise _engine_error(exc) from None
    finally:
        job.cancel.set()
    n_out = len(out.token_ids or [])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": None, "finish_reason": out.finish_reason}],
        "usage": _usage(len(job.prompt), n_out),
    }


# ----------------------------------------------------------------------------- completions


def _completion_prompts(lm: LoadedModel, prompt: Any) -> list[tuple[list[int], str | None]]:
    """(ids, original text or None) per prompt; token-id prompts are checked against the vocab."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    out: list[tuple[list[int], str | None]] = []
    vocab = len(lm.tokenizer)
    for p in prompt:
        if isinstance(p, str):
            out.append((lm.text_prompt(p), p))
        else:
            if any(t < 0 or t >= vocab for t in p):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            out.append((list(p), None))
    if not out or any(not ids for ids, _ in out):
        raise APIError(400, "empty prompt", param="prompt")
    return out


def _logprobs_block(lm: LoadedModel, ids: list[int], lps: list[float | None], tops: list[dict[int, float] | None], k: int, start: int) -> dict[str, Any]:
    tokens, offsets = token_strings_and_offsets(lm.tokenizer, ids, start)
    top_out: list[dict[str, float] | None] = []
    for t in tops:
        top_out.append(None if t is None else {lm.tokenizer.decode([i]): v for i, v in list(t.items())[:k]})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top_out, "text_offset": offsets}


def _completion_choice(lm: LoadedModel, index: int, ids: list[int], text: str | None, out: _Collected, body: CompletionRequest) -> dict[str, Any]:
    echo_text = (text if text is not None else lm.tokenizer.decode(ids)) if body.echo else ""
    logprobs = None
    if body.logprobs is not None:
        k = body.logprobs
        gen_ids = out.token_ids or []
        blocks: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        if body.echo and out.prompt is not None:
            p = out.prompt
            for key, val in _logprobs_block(lm, ids, p.logprobs, p.top_logprobs, k, 0).items():
                blocks[key].extend(val)
        if gen_ids:
            gen = _logprobs_block(lm, gen_ids, list(out.logprobs or []), list(out.top or []), k, len(echo_text))
            for key, val in gen.items():
                blocks[key].extend(val)
        logprobs = blocks
    return {"index": index, "text": echo_text + out.text, "logprobs": logprobs, "finish_reason": out.finish_reason}


async def completions(request: Request, body: CompletionRequest) -> Any:
    state = request.app.state
    lm = _lookup(state.models, body.model)
    prompts = _completion_prompts(lm, body.prompt)
    if body.stream and (len(prompts) > 1 or body.logprobs is not None):
        raise APIError(400, "streaming completions serve one prompt without logprobs", param="stream")
    jobs: list[tuple[Job, _Channel, str | None]] = []
    for ids, text in prompts:
        max_tokens = _budget(lm, len(ids), body.max_tokens, body.max_tokens, "prompt")
        params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed, body.stop_list(), body.ignore_eos, body.logprobs)
        channel = _Channel()
        job = Job(lm, ids, params, channel.emit, score=body.echo and body.logprobs is not None)
        jobs.append((job, channel, text))
    for job, _, _ in jobs:
        _submit(state.scheduler, job)
    if body.stream:
        job, channel, text = jobs[0]
        return StreamingResponse(_completion_stream(channel, job, body, text, lm), media_type="text/event-stream")
    return await _completion_response(request, lm, body, jobs)


async def _completion_response(request: Request, lm: LoadedModel, body: CompletionRequest, jobs: list[tuple[Job, _Channel, str | None]]) -> dict[str, Any]:
    choices, n_out = [], 0
    try:
        for index, (job, channel, text) in enumerate(jobs):
            out = await _collect(channel, request, job, request.app.state.settings.disconnect_poll_s)
            n_out += len(out.token_ids or [])
            choices.append(_completion_choice(lm, index, job.prompt, text, out, body))
    except APIError:
        raise
    except Exception as exc:
        raise _engine_error(exc) from None
    finally:
        for job, _, _ in jobs:
            job.cancel.set()
    return {
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": body.model,
        "choices": choices, "usage": _usage(sum(len(j.prompt) for j, _, _ in jobs), n_out),
    }


async def _completion_stream(channel: _Channel, job: Job, body: CompletionRequest, text: str | None, lm: LoadedModel) -> AsyncIterator[str]:
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    n_out, finish = 0, "length"

    def chunk(delta: str, reason: str | None) -> str:
        return _sse({"id": cid, "object": "text_completion", "created": created, "model": body.model,
                     "choices": [{"index": 0, "text": delta, "logprobs": None, "finish_reason": reason}]})

    try:
        if body.echo:
            yield chunk(text if text is not None else lm.tokenizer.decode(job.prompt), None)
        while (item := await channel.queue.get()) is not None:
            if isinstance(item, Exception):
                yield _sse(error_body(_engine_error(item).message, "server_error"))
                return
            for ev in item:
                n_out += ev.token_id is not None
                finish = ev.finish_reason or finish
                if ev.text:
                    yield chunk(ev.text, None)
        yield chunk("", finish)
        if include_usage:
            yield _sse({"id": cid, "object": "text_completion", "created": created, "model": body.model, "choices": [], "usage": _usage(len(job.prompt), n_out)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()


# ----------------------------------------------------------------------------- app


async def list_models(request: Request) -> dict[str, Any]:
    created = request.app.state.created
    data = [{"id": name, "object": "model", "created": created, "owned_by": "tunecraft", "max_model_len": lm.context_length}
            for name, lm in request.app.state.models.items()]
    return {"object": "list", "data": data}


async def health(request: Request) -> dict[str, Any]:
    s = request.app.state.scheduler.stats()
    return {"status": "ok", "models": list(request.app.state.models), "queued": s.queued, "running": s.running,
            "completed": s.completed, "cancelled": s.cancelled, "failed": s.failed}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()


def create_app(models: dict[str, LoadedModel], settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The ASGI app serving `models` (id -> loaded model); starts its worker on startup."""
    scheduler = Scheduler(settings.max_queue, settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="tunecraft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.settings, app.state.scheduler = models, settings, scheduler
    app.state.created = int(time.time())
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    _install_error_handlers(app)
    # Added last = runs first: the key check comes before reading any body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)
    return app
