"""Tool calling in chat data: validated with file:line errors, rendered through a template that
supports it, the loss on exactly the assistant's calls and replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tiny import CHATML, CHATML_TOOLS, build_tokenizer
from tunecraft.data.formats import parse_file
from tunecraft.data.render import IGNORE, tokenize_example
from tunecraft.errors import DataError

TOOLS = [{"type": "function", "function": {"name": "get_balance", "description": "Balance of an account",
                                           "parameters": {"type": "object", "properties": {"account": {"type": "string"}}}}}]
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_balance", "arguments": json.dumps({"account": "checking"})}}
CONVERSATION = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "How much is in my checking account?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"balance\": 120}"},
    {"role": "assistant", "content": "You have 120 in checking."},
]}


def _parse(tmp_path: Path, *rows: dict[str, Any]):
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return parse_file(path)


def test_a_tool_calling_conversation_validates(tmp_path: Path) -> None:
    parsed = _parse(tmp_path, CONVERSATION)
    assert parsed.issues == []
    (example,) = parsed.examples
    assert json.loads(example.tools) == TOOLS
    call = example.messages[1]
    assert call.content == "" and call.calls()[0]["function"] == {"name": "get_balance", "arguments": {"account": "checking"}}
    assert example.messages[2].role == "tool" and example.messages[2].tool_call_id == "call_1"


@pytest.mark.parametrize(("change", "needle"), [
    (lambda c: c["messages"][1]["tool_calls"][0]["function"].update(arguments="{not json"), "not valid JSON"),
    (lambda c: c["messages"][1]["tool_calls"][0].update(function={"arguments": "{}"}), 'needs "function"'),
    (lambda c: c["messages"].pop(1), "no assistant tool call comes before it"),
    (lambda c: c["messages"][0].update(tool_calls=[CALL]), "only assistant messages make tool calls"),
    (lambda c: c.update(tools=[{"type": "function"}]), '"tools" must be an array'),
])
def test_malformed_tool_calls_are_errors_at_their_line(tmp_path: Path, change: Any, needle: str) -> None:
    bad = json.loads(json.dumps(CONVERSATION))
    change(bad)
    issues = _parse(tmp_path, CONVERSATION, bad).issues
    assert [(i.line, i.code) for i in issues] == [(2, "invalid_tool_call")] and needle in issues[0].message


def test_the_loss_covers_exactly_the_assistants_calls_and_replies(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok", CHATML_TOOLS)
    (example,) = _parse(tmp_path, CONVERSATION).examples
    tok = tokenize_example(example, tokenizer)
    text = tokenizer.decode(tok.input_ids)
    assert '"name": "get_balance"' in text and "<tool_response>" in text and "You may call these tools" in text
    spans, current = [], []
    for token, label in zip(tok.input_ids, tok.labels):
        if label != IGNORE:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    call = '<tool_call>{"name": "get_balance", "arguments": {"account": "checking"}}</tool_call><|im_end|>'
    assert spans == [call, "You have 120 in checking.<|im_end|>"]


def test_a_template_without_tool_support_is_refused(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "plain", CHATML)  # renders roles, drops tool_calls
    (example,) = _parse(tmp_path, CONVERSATION).examples
    with pytest.raises(DataError, match="does not render tool calling"):
        tokenize_example(example, tokenizer)
