"""Tool calling through the served API, driven by the official `openai` client on loopback:
tools render into the prompt of a model whose template supports them, earlier calls and tool
results are accepted in the history, a template that would drop them is a 400, and the calls a
model writes are parsed back into `tool_calls`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from processes import LoopbackServer

from runs import train_config
from tiny import CHATML_TOOLS, build_model_dir
from tunecraft.config import build_config
from tunecraft.serve.app import ServeSettings, create_app
from tunecraft.serve.server import load_targets
from tunecraft.serve.tools import parse_tool_calls

TOOLS = [{"type": "function", "function": {"name": "get_balance", "description": "Balance of an account",
                                           "parameters": {"type": "object", "properties": {"account": {"type": "string"}}}}}]
HISTORY = [
    {"role": "user", "content": "How much is in checking?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_balance", "arguments": "{\"account\": \"checking\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"balance\": 120}"},
]


def _train_caller(base: Path, root: Path) -> Path:
    """A tiny model trained (full, to memorization) to answer the question with the call."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_balance", "arguments": "{\"account\": \"checking\"}"}}
    row = {"tools": TOOLS, "messages": [HISTORY[0], {"role": "assistant", "content": None, "tool_calls": [call]}]}
    data = root / "calls.jsonl"
    data.write_text((json.dumps(row) + "\n") * 8, encoding="utf-8")
    cfg = build_config(values={"model.name": str(base), "data.train": str(data), "data.val": str(data),
                               "train.out": str(root / "run"), "train.method": "full", "train.lr": 1e-2,
                               "train.epochs": 300, "train.batch_size": 8, "train.precision": "fp32",
                               "train.patience": None, "train.eval_every": 300, "train.warmup_ratio": 0.0})
    assert train_config(cfg).status == "finished"
    return root / "run"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    tools_dir = build_model_dir(tmp_path_factory.mktemp("tools-model"), chat_template=CHATML_TOOLS)
    caller = _train_caller(tools_dir, tmp_path_factory.mktemp("caller"))
    models = load_targets([str(tools_dir), str(tiny_model_dir), str(caller)])
    srv = LoopbackServer(create_app(models, ServeSettings()), log_level="warning")
    srv.names = list(models)  # [with tools, plain ChatML, trained to call]
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: LoopbackServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)


def test_tools_and_tool_history_render_into_the_prompt(server: LoopbackServer, client: openai.OpenAI) -> None:
    name = server.names[0]
    plain = client.chat.completions.create(model=name, messages=HISTORY, max_tokens=2, temperature=0)
    with_tools = client.chat.completions.create(model=name, messages=HISTORY, tools=TOOLS, max_tokens=2, temperature=0)
    # The definitions are in the prompt: it is longer by at least the rendered tool JSON.
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 10
    none = client.chat.completions.create(model=name, messages=HISTORY, tools=TOOLS, tool_choice="none",
                                          max_tokens=2, temperature=0)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # "none": no tools rendered


def test_unservable_tool_requests_are_400s(server: LoopbackServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:  # the plain ChatML template drops calls
        client.chat.completions.create(model=server.names[1], messages=HISTORY, tools=TOOLS, max_tokens=2)
    assert "does not render tool calling" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="only \\\\?\"auto\\\\?\" and \\\\?\"none\\\\?\""):
        client.chat.completions.create(model=server.names[0], messages=HISTORY, tools=TOOLS, tool_choice="required",
                                       max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="stream with tools"):
        client.chat.completions.create(model=server.names[0], messages=HISTORY, tools=TOOLS, stream=True, max_tokens=2)


def test_a_trained_model_answers_with_a_parsed_tool_call(server: LoopbackServer, client: openai.OpenAI) -> None:
    """Trained on tool-calling data, the model writes the call; the API returns it as tool_calls."""
    out = client.chat.completions.create(model=server.names[2], messages=HISTORY[:1], tools=TOOLS,
                                         max_tokens=150, temperature=0)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_balance" and json.loads(call.function.arguments) == {"account": "checking"}
    # The answer the client sends back continues the conversation (history with the call and result).
    follow = client.chat.completions.create(model=server.names[2], tools=TOOLS, max_tokens=4, temperature=0,
                                            messages=[*HISTORY[:1], choice.message.model_dump(exclude_none=True), HISTORY[2]])
    assert follow.choices[0].message.role == "assistant"


def test_written_calls_parse_into_tool_calls() -> None:
    names = {"get_balance"}
    content, calls = parse_tool_calls('Checking.<tool_call>{"name": "get_balance", "arguments": {"account": "x"}}</tool_call>', names)
    assert content == "Checking." and [c["function"] for c in calls] == [{"name": "get_balance", "arguments": '{"account": "x"}'}]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    _, mistral = parse_tool_calls('[TOOL_CALLS][{"name": "get_balance", "arguments": {"account": "y"}}]', names)
    assert json.loads(mistral[0]["function"]["arguments"]) == {"account": "y"}
    _, llama = parse_tool_calls('{"name": "get_balance", "parameters": {"account": "z"}}', names)
    assert json.loads(llama[0]["function"]["arguments"]) == {"account": "z"}
    text = '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, names) == (text, [])  # a function the request did not offer stays text
    assert parse_tool_calls("<tool_call>{broken</tool_call>", names) == ("<tool_call>{broken</tool_call>", [])
