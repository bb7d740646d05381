"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/health`.

Request handlers only translate between HTTP and the engine: they check the request against the
server's limits, build prompt ids, check the token budget, and hand `Job`s to the `Scheduler`,
whose worker thread feeds each job's events back through an asyncio queue. Anything slow that is
not generation (rendering and tokenizing a prompt of up to the body limit, the echo + logprobs
offsets) runs in a thread pool, so the event loop keeps answering /health and other requests.
Guards (host names, API key, body size) are ASGI middleware in `serve.guards`. Every error is an
OpenAI error object; an unexpected one says nothing of the server's internals (they go to its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunecraft.errors import TunecraftError
from tunecraft.serve.engine import (
    LabelAnswer,
    LoadedModel,
    PromptLogprobs,
    SamplingParams,
    TokenEvent,
    token_strings_and_offsets,
)
from tunecraft.serve.guards import APIKeyMiddleware, BodyLimitMiddleware, LoopbackHostMiddleware
from tunecraft.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body
from tunecraft.serve.scheduler import Job, QueueFullError, Scheduler, WorkerDeadError
from tunecraft.serve.tools import ToolRequestError, message_dict, parse_tool_calls, tools_for

log = logging.getLogger("tunecraft.serve")


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20  # 1 MiB of JSON is far beyond any prompt a small model can take
    max_queue: int = 64  # waiting requests before answering 429
    max_batch: int = 8  # requests decoded together
    default_max_tokens: int = 512  # when a chat request gives no max_tokens
    max_tokens_limit: int = 4096  # the most any request may ask for (a 400 beyond, never a silent cut)
    max_prompts: int = 32  # prompts in one completions request (each is one queued job)
    max_stop: int = 4  # stop strings per request (OpenAI's limit)
    max_stop_chars: int = 256  # characters per stop string (each is matched at every token)
    disconnect_poll_s: float = 0.5  # how often a non-streaming request checks its client


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ----------------------------------------------------------------------------- job plumbing


class _Channel:
    """Carries a job's events from the worker thread into the request's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def emit(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone when the server shut down mid-job
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


async def _ensure_loaded(request: Request, name: str) -> None:
    """A tuned model of the fine-tuning service (or one of its checkpoints) loads on first use,
    off the event loop; anything else must already be served."""
    extension: Extension | None = request.app.state.extension
    if extension is not None and name not in request.app.state.models:
        await run_in_threadpool(extension.resolve, name)


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


def _submit(scheduler: Scheduler, jobs: list[Job]) -> None:
    """Queue a request's jobs all together (a 429 leaves none of them queued)."""
    try:
        scheduler.submit_all(jobs)
    except QueueFullError as exc:
        raise APIError(429, str(exc), "server_overloaded", code="queue_full") from None
    except WorkerDeadError as exc:
        raise APIError(503, str(exc), "server_error", code="worker_unavailable") from None


def _check_stop(stop: tuple[str, ...], settings: ServeSettings) -> None:
    if len(stop) > settings.max_stop:
        raise APIError(400, f"stop: at most {settings.max_stop} stop strings are allowed (got {len(stop)})", param="stop")
    longest = max((len(s) for s in stop), default=0)
    if longest > settings.max_stop_chars:
        raise APIError(
            400, f"stop: each stop string may have at most {settings.max_stop_chars} characters (got {longest})", param="stop"
        )


def _check_max_tokens(lm: LoadedModel, requested: int | None, settings: ServeSettings, param: str) -> None:
    """The server's own cap, checked before any tokenizing (the context check follows it)."""
    if requested is not None and requested > settings.max_tokens_limit:
        raise APIError(
            400,
            f"{param}={requested} is too large: this server allows at most {settings.max_tokens_limit}, and this "
            f"model's context length is {lm.context_length} tokens (prompt included); ask for fewer",
            param=param,
        )


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
    label: LabelAnswer | None = None  # a closed-label model's answer with the set's probabilities
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
        if isinstance(item, LabelAnswer):
            out.label = item
            continue
        for ev in item:
            out.add(ev)
    return out


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _engine_error(exc: Exception) -> APIError:
    """The answer for a job's failure: the user's own mistakes say what to fix, the rest says nothing internal."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TunecraftError):
        return APIError(400, str(exc))
    if isinstance(exc, WorkerDeadError):
        return APIError(503, str(exc), "server_error", code="worker_unavailable")
    log.error("generation failed", exc_info=exc)
    return APIError(500, "generation failed on the server; its log has the details", "server_error", code="internal_error")


# ----------------------------------------------------------------------------- chat


def _chat_job(models: dict[str, LoadedModel], body: ChatCompletionRequest, settings: ServeSettings,
              channel: _Channel) -> tuple[Job, list[dict[str, Any]] | None]:
    """The generation job of a chat request, and the tool definitions it offered (None: no tools)."""
    lm = _lookup(models, body.model)
    try:
        offered = tools_for(body.tools, body.tool_choice)
        messages = [message_dict("system" if m.role == "developer" else m.role, m.text(), m.tool_calls,
                                 m.tool_call_id, m.name) for m in body.messages]
    except ToolRequestError as exc:
        raise APIError(400, str(exc), param=exc.param) from None
    if offered and body.stream:
        raise APIError(400, "stream with tools is not served: the calls are parsed from the whole answer; "
                       "send stream=false", param="stream")
    try:
        ids = lm.chat_prompt(messages, offered)
    except TunecraftError as exc:
        raise APIError(400, str(exc), param="tools" if offered and "tool calling" in str(exc) else "messages") from None
    default = min(settings.default_max_tokens, settings.max_tokens_limit)
    max_tokens = _budget(lm, len(ids), body.requested_max_tokens(), default, "messages")
    params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed, body.stop_list(), body.ignore_eos,
                            body.logprobs_k())
    classify = lm.labels is not None and body.label_constraint and not offered  # a call is no label
    return Job(lm, ids, params, channel.emit, classify=classify, reject=body.label_reject), offered


def _chat_logprobs(lm: LoadedModel, out: _Collected) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: per generated token its text, log-prob, bytes and top alternatives."""
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = lm.tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for tok, lp, top in zip(out.token_ids or [], out.logprobs or [], out.top or []):
        content.append({**entry(tok, lp), "top_logprobs": [entry(t, v) for t, v in top.items()]})
    return {"content": content, "refusal": None}


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
        label: LabelAnswer | None = None
        while (item := await channel.queue.get()) is not None:
            if isinstance(item, Exception):
                yield _sse(_engine_error(item).body())
                return
            if isinstance(item, LabelAnswer):
                label = item
                continue
            for ev in item:
                n_out += ev.token_id is not None
                finish = ev.finish_reason or finish
                if ev.text:
                    yield _sse(_chat_chunk(cid, created, model, {"content": ev.text}, None, include_usage))
        last = _chat_chunk(cid, created, model, {}, finish, include_usage)
        if label is not None:
            last["choices"][0]["label"] = label.to_json()
        yield _sse(last)
        if include_usage:
            yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": _usage(len(job.prompt), n_out)})
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # the client went away (or we are done): stop generating for it


async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
    state = request.app.state
    await _ensure_loaded(request, body.model)
    settings: ServeSettings = state.settings
    _check_stop(body.stop_list(), settings)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    _check_max_tokens(_lookup(state.models, body.model), body.requested_max_tokens(), settings, param)
    channel = _Channel()
    # Rendering and tokenizing up to max_body_bytes of text takes a while: not on the event loop.
    job, offered = await run_in_threadpool(_chat_job, state.models, body, settings, channel)
    _submit(state.scheduler, [job])
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
    lm = _lookup(state.models, body.model)
    message: dict[str, Any] = {"role": "assistant", "content": out.text}
    finish = out.finish_reason
    if offered:
        content, calls = parse_tool_calls(out.text, {t["function"]["name"] for t in offered})
        if calls:
            message, finish = {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "logprobs": _chat_logprobs(lm, out) if body.logprobs else None,
                              "finish_reason": finish}
    if out.label is not None:
        choice["label"] = out.label.to_json()
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": [choice], "usage": _usage(len(job.prompt), n_out),
    }


# ----------------------------------------------------------------------------- completions


def _prompt_list(prompt: Any) -> list[Any]:
    """The request's prompts as a list: each a text or a list of token ids (cheap, no tokenizing)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    return list(prompt)


def _check_prompt_count(prompts: list[Any], settings: ServeSettings) -> None:
    # More prompts than the queue holds could never be served at once: a 400, not a 429 to retry.
    cap = min(settings.max_prompts, settings.max_queue)
    if len(prompts) > cap:
        raise APIError(400, f"prompt: at most {cap} prompts per request (got {len(prompts)}); split the request", param="prompt")


def _completion_prompts(lm: LoadedModel, prompt: list[Any]) -> list[tuple[list[int], str | None]]:
    """(ids, original text or None) per prompt; token-id prompts are checked against the vocab."""
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
    await _ensure_loaded(request, body.model)
    settings: ServeSettings = state.settings
    lm = _lookup(state.models, body.model)
    raw_prompts = _prompt_list(body.prompt)
    _check_prompt_count(raw_prompts, settings)
    _check_stop(body.stop_list(), settings)
    _check_max_tokens(lm, body.max_tokens, settings, "max_tokens")
    if body.stream and (len(raw_prompts) > 1 or body.logprobs is not None):
        raise APIError(400, "streaming completions serve one prompt without logprobs", param="stream")
    prompts = await run_in_threadpool(_completion_prompts, lm, raw_prompts)
    jobs: list[tuple[Job, _Channel, str | None]] = []
    for ids, text in prompts:
        max_tokens = _budget(lm, len(ids), body.max_tokens, body.max_tokens, "prompt")
        params = SamplingParams(max_tokens, body.temperature, body.top_p, body.seed, body.stop_list(), body.ignore_eos, body.logprobs)
        channel = _Channel()
        job = Job(lm, ids, params, channel.emit, score=body.echo and body.logprobs is not None)
        jobs.append((job, channel, text))
    _submit(state.scheduler, [job for job, _, _ in jobs])
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
            # echo + logprobs may decode every prefix of the prompt (the offsets fallback): off the loop
            choices.append(await run_in_threadpool(_completion_choice, lm, index, job.prompt, text, out, body))
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
            yield chunk(text if text is not None else await run_in_threadpool(lm.tokenizer.decode, job.prompt), None)
        while (item := await channel.queue.get()) is not None:
            if isinstance(item, Exception):
                yield _sse(_engine_error(item).body())
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
    models = dict(request.app.state.models)  # a job may hot-load one meanwhile
    data = [{"id": name, "object": "model", "created": created, "owned_by": "tunecraft", "max_model_len": lm.context_length,
             "labels": _label_info(lm)} for name, lm in models.items()]
    extension: Extension | None = request.app.state.extension
    if extension is not None:  # tuned models not loaded yet (after a restart) load on first use
        data += [{"id": name, "object": "model", "created": created, "owned_by": "tunecraft", "max_model_len": None}
                 for name in await run_in_threadpool(extension.listed) if name not in models]
    return {"object": "list", "data": data}


def _label_info(lm: LoadedModel) -> dict[str, Any] | None:
    """A closed-label model's label set (chat answers are constrained to it), else None."""
    if lm.labels is None:
        return None
    return {"count": len(lm.labels.labels), "labels": list(lm.labels.labels),
            "reject_label": lm.labels.reject_label, "threshold": lm.labels.threshold}


async def health(request: Request) -> JSONResponse:
    """Counters, and whether the generation worker runs: 503 when it does not (nothing would be served)."""
    scheduler: Scheduler = request.app.state.scheduler
    s, alive = scheduler.stats(), scheduler.alive()
    body = {"status": "ok" if alive else "unavailable", "worker_alive": alive, "models": list(request.app.state.models),
            "queued": s.queued, "running": s.running, "completed": s.completed, "cancelled": s.cancelled, "failed": s.failed}
    return JSONResponse(body, status_code=200 if alive else 503)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = _most_specific(exc.errors())
        param = _param(first.get("loc", ()))
        return APIError(400, f"{param or 'body'}: {first.get('msg')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette calls this outermost, for anything no other handler took; uvicorn logs the traceback.
        log.error("request failed", exc_info=exc)
        return APIError(500, "the server failed to answer this request; its log has the details", "server_error", code="internal_error").response()


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: Any) -> str | None:
    """The request field a validation error is about: `messages.0.content` (pydantic's union tags dropped)."""
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    return ".".join(parts) or None


def _most_specific(errors: Any) -> dict[str, Any]:
    """The error to report: a failed check of a value (a lone surrogate, say) over the "not a string"
    of another branch of a union; else the one deepest into the request."""
    if not errors:
        return {"loc": (), "msg": "invalid request"}
    return min(errors, key=lambda e: (e.get("type") != "value_error", -len((_param(e.get("loc", ())) or "").split("."))))


class Extension(Protocol):
    """Routes mounted beside the API with their own lifetime and models: the fine-tuning service
    (`tunecraft.service.api.Service`) is one; serve knows it only through this."""

    upload_limits: dict[str, int]  # path -> body limit in bytes, for routes that take files
    public_paths: frozenset[str]  # paths served without the API key (static files, no data)

    def router(self) -> APIRouter: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def resolve(self, name: str) -> LoadedModel | None: ...  # load a model it knows on first use
    def listed(self) -> list[str]: ...  # the models it can serve


def create_app(models: dict[str, LoadedModel], settings: ServeSettings = ServeSettings(),
               extension: Extension | None = None) -> FastAPI:
    """The ASGI app serving `models` (id -> loaded model); starts its worker on startup.

    An `extension` adds routes (OpenAI's files and fine-tuning jobs) whose models join `models`.
    """
    scheduler = Scheduler(settings.max_queue, settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        if extension is not None:
            extension.start()
        yield
        if extension is not None:
            await run_in_threadpool(extension.stop)
        scheduler.stop()

    app = FastAPI(title="tunecraft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.models, app.state.settings, app.state.scheduler = models, settings, scheduler
    app.state.created = int(time.time())
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.state.extension = extension
    if extension is not None:
        app.include_router(extension.router())
    _install_error_handlers(app)
    # Added last = runs first: the host and key checks come before reading any body.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       large=extension.upload_limits if extension is not None else None)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key,
                           public=extension.public_paths if extension is not None else frozenset())
    else:  # keyless means loopback only (serve.check_bind): answer only loopback host names
        app.add_middleware(LoopbackHostMiddleware)
    return app
