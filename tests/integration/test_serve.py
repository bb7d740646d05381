"""The OpenAI-compatible server, driven by the official `openai` client against real uvicorn on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from processes import LoopbackServer
from runs import build_lora_run

from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.engine import LoadedModel, SamplingParams, generate_chat
from tunecraft.serve.server import load_targets

KEY = "test-key"


class _Server(LoopbackServer):
    def __init__(self, app) -> None:
        super().__init__(app, log_level="warning")


@pytest.fixture(scope="module")
def run_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-runs")
    return {name: build_lora_run(root / name, tiny_model_dir, seed=seed) for name, seed in (("run-a", 1), ("run-b", 2))}


@pytest.fixture(scope="module")
def models(run_dirs: dict[str, Path], tiny_model_dir: Path) -> dict[str, LoadedModel]:
    return load_targets([str(run_dirs["run-a"]), str(run_dirs["run-b"]), str(tiny_model_dir)])


@pytest.fixture(scope="module")
def server(models: dict[str, LoadedModel]) -> Iterator[_Server]:
    app = create_app(models, ServeSettings(api_key=KEY, max_body_bytes=32 * 1024, max_queue=64, max_batch=8))
    srv = _Server(app)
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: _Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_models_share_one_base(models: dict[str, LoadedModel], client: openai.OpenAI, tiny_model_dir: Path) -> None:
    ids = {m.id for m in client.models.list().data}
    assert ids == {"run-a", "run-b", str(tiny_model_dir)}
    shared = {id(lm.shared) for lm in models.values()}
    assert len(shared) == 1  # two adapters and the plain base: one set of base weights


def test_chat_matches_engine_and_counts_usage(models: dict[str, LoadedModel], client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="run-a", messages=_chat("hello"), max_tokens=12, temperature=0)
    direct = generate_chat(models["run-a"], [_chat("hello")], SamplingParams(max_tokens=12))[0]
    assert resp.choices[0].message.content == direct.text
    assert resp.choices[0].finish_reason == ("stop" if direct.finish_reason == "stop" else "length")
    assert resp.usage.prompt_tokens == direct.prompt_tokens
    assert resp.usage.completion_tokens == direct.completion_tokens
    assert resp.usage.total_tokens == direct.prompt_tokens + direct.completion_tokens


def test_adapters_differ_per_model(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    outs = {
        m: client.chat.completions.create(model=m, messages=_chat("refund"), max_tokens=8, temperature=0).choices[0].message.content
        for m in ("run-a", "run-b", str(tiny_model_dir))
    }
    assert len(set(outs.values())) == 3


def test_stream_with_usage(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="run-b", messages=_chat("hi there"), max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="run-b", messages=_chat("hi there"), max_tokens=10, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason


def test_sampling_seed_and_stop(client: openai.OpenAI) -> None:
    kw = dict(model="run-a", messages=_chat("the quick"), max_tokens=16, temperature=1.0, top_p=0.9, seed=7, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b and a
    stop = a[len(a) // 2 : len(a) // 2 + 2]
    cut = client.chat.completions.create(**kw, stop=[stop])
    assert cut.choices[0].message.content == a[: a.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def _reference_logprobs(run_dir: Path, base_dir: Path, ids: list[int]) -> list[float]:
    from peft import PeftModel

    from tunecraft.models.load import load_model

    ref = PeftModel.from_pretrained(load_model(base_dir), str(run_dir / "model")).eval()
    with torch.no_grad():
        logp = torch.log_softmax(ref(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_completions_echo_logprobs(
    models: dict[str, LoadedModel], run_dirs: dict[str, Path], client: openai.OpenAI, tiny_model_dir: Path
) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    resp = client.completions.create(model="run-a", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = resp.choices[0].logprobs
    ids = models["run-a"].text_prompt(text)
    assert resp.choices[0].text == text
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = _reference_logprobs(run_dirs["run-a"], tiny_model_dir, ids)
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], expected)) < 1e-5
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    for actual, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert len(top) == 1 and max(top.values()) >= actual - 1e-6


def test_completions_token_prompt_like_lm_eval(models: dict[str, LoadedModel], client: openai.OpenAI) -> None:
    ids = models["run-b"].text_prompt("hello how can i help you")
    resp = client.completions.create(model="run-b", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = resp.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1  # the prompt, then the one generated token
    assert lp.token_logprobs[0] is None and all(isinstance(x, float) for x in lp.token_logprobs[1:])


def test_wrong_key_is_401_but_health_is_open(server: _Server) -> None:
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.body["type"] == "authentication_error"
    assert httpx.post(f"{server.url}/v1/chat/completions", json={}).status_code == 401
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_body_too_large_is_413(server: _Server) -> None:
    body = {"model": "run-a", "messages": _chat("x" * 100_000)}
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 413
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_max_tokens_beyond_context_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="run-a", messages=_chat("hi"), max_tokens=100_000)
    assert "512" in err.value.body["message"] and err.value.body["param"] == "max_tokens"


def test_unknown_model_and_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=_chat("hi"))
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="run-a", messages=_chat("hi"), temperature=5)


def test_eight_concurrent_streams_equal_sequential(client: openai.OpenAI, tiny_model_dir: Path) -> None:
    names = ["run-a", "run-b", str(tiny_model_dir)]
    jobs = [(names[i % 3], f"question number {i} about refunds"[: 12 + 3 * i]) for i in range(8)]

    def one(job: tuple[str, str], stream: bool) -> str:
        model, text = job
        kw = dict(model=model, messages=_chat(text), max_tokens=20, temperature=0)
        if not stream:
            return client.chat.completions.create(**kw).choices[0].message.content
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True) if c.choices)

    sequential = [one(j, stream=False) for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda j: one(j, stream=True), jobs))
    assert concurrent == sequential


def test_disconnect_mid_stream_stops_generation(server: _Server) -> None:
    before = httpx.get(f"{server.url}/health").json()["cancelled"]
    body = {"model": "run-a", "messages": _chat("go"), "max_tokens": 400, "temperature": 0, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=headers) as resp:
        lines = resp.iter_lines()
        for _ in range(4):
            next(lines)
    deadline = time.time() + 10
    while time.time() < deadline:
        health = httpx.get(f"{server.url}/health").json()
        if health["cancelled"] > before and health["running"] == 0:
            break
        time.sleep(0.05)
    assert health["cancelled"] > before and health["running"] == 0


def test_full_queue_answers_429(models: dict[str, LoadedModel]) -> None:
    app = create_app(models, ServeSettings(max_queue=1, max_batch=1))
    srv = _Server(app)
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=60)

        def one(_i: int) -> str:
            try:
                client.chat.completions.create(model="run-a", messages=_chat("go"), max_tokens=200, temperature=0, extra_body={"ignore_eos": True})
                return "ok"
            except openai.RateLimitError as exc:
                assert exc.body["type"] == "server_overloaded"
                return "429"

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8)))
        assert "429" in results and "ok" in results
    finally:
        srv.stop()
