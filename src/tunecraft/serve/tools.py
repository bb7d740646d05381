"""Tool calling in the served API: requests' tool messages as templates take them, and the
calls a model writes parsed back into OpenAI's `tool_calls`.

Models trained on tool calls write them the way their chat template renders them. The layouts
parsed here: `<tool_call>{"name", "arguments"}</tool_call>` (Qwen2.5, Hermes, and the test
template), Mistral's `[TOOL_CALLS][{"name", "arguments"}, ...]`, and Llama 3.1's bare JSON
object `{"name", "parameters"}` as the whole answer. Anything else stays text in `content`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tunecraft.data.formats import template_call
from tunecraft.data.render import template_message

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"


class ToolRequestError(ValueError):
    """A tool field of a request that cannot be served (a 400 naming `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def tools_for(tools: list[dict[str, Any]] | None, tool_choice: Any) -> list[dict[str, Any]] | None:
    """The definitions to render, from `tools` and `tool_choice` (None: no tools)."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ToolRequestError("tool_choice needs tools", "tool_choice")
        return None
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolRequestError(f'tools[{i}] must be {{"type": "function", "function": {{"name", ...}}}}', "tools")
    if tool_choice == "none":
        return None
    if tool_choice not in (None, "auto"):
        raise ToolRequestError('tool_choice: only "auto" and "none" are served; forcing a call ("required" or a '
                               "named function) would need the call itself constrained, which this server "
                               "does not do", "tool_choice")
    return tools


def message_dict(role: str, content: str, tool_calls: list[dict[str, Any]] | None, tool_call_id: str | None,
                 name: str | None) -> dict[str, Any]:
    """A request message as chat templates take it (a call's arguments as an object: OpenAI sends
    them as a JSON string); a malformed call is a 400 naming `messages`."""
    calls = [_template_call(c, i) for i, c in enumerate(tool_calls or [])]
    return template_message(role, content, calls, tool_call_id or "", name or "")


def _template_call(call: dict[str, Any], i: int) -> dict[str, Any]:
    entry, problem = template_call(call)
    if entry is None:
        raise ToolRequestError(f"tool_calls[{i}]{problem}", "messages")
    return entry


def parse_tool_calls(text: str, names: set[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, calls) of a generated answer: each call a known function's name with its
    arguments (as OpenAI sends them, a JSON string). A block that is not valid JSON, or names a
    function the request did not offer, stays in the text."""
    calls: list[dict[str, Any]] = []
    kept = text
    for match in _TAGGED.finditer(text):
        call = _call(match.group(1), names)
        if call is not None:
            calls.append(call)
            kept = kept.replace(match.group(0), "", 1)
    if not calls and text.lstrip().startswith(_MISTRAL):
        body = text.lstrip()[len(_MISTRAL):].strip()
        parsed = _json(body)
        items = parsed if isinstance(parsed, list) else [parsed]
        found = [c for c in (_call(json.dumps(i), names) for i in items if isinstance(i, dict)) if c is not None]
        if found and len(found) == len(items):
            calls, kept = found, ""
    if not calls:
        whole = _call(text.strip(), names)  # Llama 3.1: the answer is the call
        if whole is not None:
            calls, kept = [whole], ""
    content = kept.strip()
    return (content or None) if calls else text, calls


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def _call(text: str, names: set[str]) -> dict[str, Any] | None:
    obj = _json(text)
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = _json(arguments)
    if not isinstance(arguments, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(arguments)}}
