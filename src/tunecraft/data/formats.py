"""Dataset formats: detect each record's format and parse it into an `Example`, collecting issues.

JSONL files hold one object per line in one of four formats (chat `messages`, `prompt` +
`completion`, `instruction` + optional `input` + `output`, raw `text`); CSV files have a header
with `prompt,completion` or `text` columns. Every problem becomes an `Issue` naming the line, the
bad value and the fix, so `data check` can list all of them at once. Nothing is dropped or
changed silently: duplicate keys and CSV columns are errors, text that cannot be tokenized (lone
surrogates, NUL characters) is an error at its line, and keys training ignores are warnings.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft.data.parquet import parquet_rows
from tunecraft.data.reader import MAX_LINE_BYTES, Line, ReadResult, data_suffix, read_lines
from tunecraft.data.schema import ROLES, Example, Format, Issue, Message

# Keys that identify a format, checked in this order: a record with `messages` is a chat even if
# it also carries `text` (datasets often keep a rendered copy next to the structured fields).
# Preference pairs come first: OpenAI's preference rows carry "input", which would otherwise
# read as the instruction format.
FORMAT_KEYS: dict[Format, tuple[str, ...]] = {
    "preference": ("preferred_output", "non_preferred_output", "chosen", "rejected"),
    "chat": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "input", "output"),
    "text": ("text",),
}
FORMAT_HELP = (
    '{"messages": [{"role": ..., "content": ...}]} (chat), {"prompt", "completion"}, '
    '{"instruction", "input" (optional), "output"}, {"text"}, or a preference pair: '
    '{"input": {"messages"}, "preferred_output", "non_preferred_output"} (OpenAI) or '
    '{"prompt", "chosen", "rejected"}'
)
# Keys of other common layouts, so the message can say how to convert.
FOREIGN_KEYS = {
    "conversations": 'ShareGPT layout: convert to "messages" with "role" and "content"',
    "question": 'rename "question"/"answer" to "prompt"/"completion"',
    "query": 'rename "query"/"response" to "prompt"/"completion"',
    "content": 'rename "content" to "text" for raw text',
}
ROLE_HINTS = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
              "ai": "assistant", "chatbot": "assistant", "developer": "system"}
CSV_COLUMNS: dict[Format, tuple[str, ...]] = {"prompt_completion": ("prompt", "completion"),
                                              "text": ("text",)}
MESSAGE_KEYS = ("role", "content", "weight", "tool_calls", "tool_call_id")
# Message keys of richer chat formats that training drops, and what dropping them means.
IGNORED_MESSAGE_HINTS = {
    "function_call": 'the legacy "function_call" is not read: write it as "tool_calls"',
    "name": "the chat template does not render speaker names",
}
# Top-level keys that change what a conversation means; others (ids, metadata) are bookkeeping.
# "tools" is read (the definitions the template renders); these two are not.
TOOL_KEYS = ("functions", "parallel_tool_calls")
# A NUL, or a lone UTF-16 surrogate (a JSON escape like "\ud83d" without its pair): neither is
# text a tokenizer accepts, so they must stop at validation, not crash tokenization later.
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


@dataclass
class Record:
    """One parsed line: its detected format (None: unknown), the example if valid, its issues."""

    line: int
    format: Format | None
    example: Example | None
    issues: list[Issue] = field(default_factory=list)


@dataclass
class ParsedFile:
    path: Path
    format: Format | None  # the file's format (the most common one among its records)
    examples: Sequence[Example]  # a list; raw-text JSONL: data.textfile.TextRecords, read on demand
    issues: list[Issue]

    @property
    def n_errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type (what the user sees in their file)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


def detect_format(obj: dict[str, Any]) -> Format | None:
    for fmt, keys in FORMAT_KEYS.items():
        if any(key in obj for key in keys):
            return fmt
    return None


class _Checker:
    """Collects the issues of one record (keeps the per-field checks short)."""

    def __init__(self, path: str, line: int) -> None:
        self.path, self.line = path, line
        self.issues: list[Issue] = []

    def add(self, code: str, message: str, severity: str = "error") -> None:
        self.issues.append(Issue(self.path, self.line, code, message, severity))  # type: ignore[arg-type]

    @property
    def ok(self) -> bool:
        return not any(i.severity == "error" for i in self.issues)

    def string(self, obj: dict[str, Any], key: str, fix: str, required: bool = True) -> str:
        """The string at `obj[key]`; a missing, non-string or blank value becomes an issue."""
        if key not in obj or (obj[key] is None and not required):
            if required:
                self.add("missing_field", f'missing "{key}"; {fix}')
            return ""
        value = obj[key]
        if not isinstance(value, str):
            self.add("non_string_content", f'"{key}" must be a string, got {json_type(value)}')
            return ""
        if required and not value.strip():
            self.add("empty_field", f'"{key}" is empty; {fix}')
        self.text(value, f'"{key}"')
        return value

    def text(self, value: str, where: str) -> None:
        """An issue when `value` holds a character no tokenizer accepts (NUL, lone surrogate)."""
        match = _BAD_CHAR.search(value)
        if match is None:
            return
        at = match.start() + 1
        if match.group() == "\x00":
            self.add("nul_character", f"{where} holds a NUL character (\\u0000) at character "
                     f"{at}; remove it (NULs come from binary data or a UTF-16 file read as UTF-8)")
        else:
            self.add("invalid_unicode", f"{where} holds a lone surrogate \\u{ord(match.group()):04x} "
                     f"at character {at}: half of an escaped UTF-16 pair, which is not text; write "
                     'the character itself, escape the whole pair (e.g. "\\ud83d\\ude00"), or remove it')


def _parse_prompt_completion(obj: dict[str, Any], c: _Checker) -> Example | None:
    prompt = c.string(obj, "prompt", "write the input the model will see (no prompt? use the text format)")
    completion = c.string(obj, "completion", "write the answer the model should learn")
    if not c.ok:
        return None
    return Example("prompt_completion", c.path, c.line, prompt=prompt, completion=completion)


def _parse_instruction(obj: dict[str, Any], c: _Checker) -> Example | None:
    if isinstance(obj.get("input"), dict) and "messages" in obj["input"]:
        c.add("missing_field", 'this looks like OpenAI\'s preference format ("input": {"messages"}) '
              'without its answers; add "preferred_output" and "non_preferred_output" (each a list '
              'with one assistant message)')
        return None
    instruction = c.string(obj, "instruction", "write the task the model should do")
    inp = c.string(obj, "input", "", required=False)  # optional context; may be empty or null
    output = c.string(obj, "output", "write the answer the model should learn")
    if not c.ok:
        return None
    return Example("instruction", c.path, c.line, instruction=instruction, input=inp, output=output)


def _parse_text(obj: dict[str, Any], c: _Checker) -> Example | None:
    text = c.string(obj, "text", "write the document text, or drop the row")
    return Example("text", c.path, c.line, text=text) if c.ok else None


def _check_role(msg: dict[str, Any], where: str, c: _Checker) -> str | None:
    if "role" not in msg:
        c.add("missing_field", f'{where} has no "role"; use one of {", ".join(ROLES)}')
        return None
    role = msg["role"]
    if role in ROLES:
        return role
    hint = f"use one of {', '.join(ROLES)}"
    if isinstance(role, str) and role.lower() in ROLE_HINTS:
        hint = f'use "{ROLE_HINTS[role.lower()]}"'
    elif role in ("function", "ipython"):
        hint = 'a tool result is a "tool" message (with the tool_call_id it answers)'
    c.add("bad_role", f"{where}.role is {json.dumps(role)}; {hint}")
    return None


def _check_content(msg: dict[str, Any], where: str, c: _Checker) -> str | None:
    if "content" not in msg:
        c.add("missing_field", f'{where} has no "content"; add the message text')
        return None
    content = msg["content"]
    if isinstance(content, list):
        content = _text_parts(content, f"{where}.content", c)
        if content is None:
            return None
    if not isinstance(content, str):
        c.add("non_string_content", f"{where}.content must be a string, got {json_type(content)}")
        return None
    if not content.strip():
        c.add("empty_field", f"{where}.content is empty; write the message text or drop the message")
    c.text(content, f"{where}.content")
    return content


def _text_parts(parts: list[Any], where: str, c: _Checker) -> str | None:
    """OpenAI's content-part list (`[{"type": "text", "text": ...}, ...]`) as one string, the parts
    joined by newlines (as vLLM and llama.cpp's servers render them); any other part is an error
    naming it, since a text model cannot train on an image or a sound."""
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
            continue
        what = (f'a "{kind}" part' if isinstance(kind, str) else
                f"{json_type(part)}" if not isinstance(part, dict) else 'a part without "type"')
        c.add("non_string_content", f"{where}[{i}] is {what}; only text parts "
              '({"type": "text", "text": "..."}) can train a text model: drop the others')
        return None
    if not texts:
        c.add("empty_field", f"{where} is an empty list of parts; write the message text")
        return None
    return "\n".join(texts)


def _check_ignored(msg: dict[str, Any], where: str, c: _Checker) -> None:
    """A warning naming the keys of a message that training drops."""
    ignored = [key for key in msg if key not in MESSAGE_KEYS]
    if not ignored:
        return
    hints = [IGNORED_MESSAGE_HINTS.get(key, "training reads only role, content and weight")
             for key in ignored]
    names = ", ".join(json.dumps(key) for key in ignored)
    c.add("ignored_field", f"{where} has {names}, which training ignores "
          f"({'; '.join(dict.fromkeys(hints))}); remove it, or put what matters into the content",
          "warning")


def _check_weight(msg: dict[str, Any], role: str | None, where: str, c: _Checker) -> int:
    if "weight" not in msg:
        return 1
    weight = msg["weight"]
    if isinstance(weight, bool) or weight not in (0, 1):
        c.add("invalid_weight", f"{where}.weight is {json.dumps(weight)}; use 0 (exclude the "
              "message from the loss) or 1 (train on it)")
        return 1
    if role is not None and role != "assistant":
        c.add("invalid_weight", f'{where} is a "{role}" message; only assistant messages take a '
              "weight (the others never bear loss): remove it")
    return int(weight)


def _parse_message(msg: Any, where: str, c: _Checker) -> Message | None:
    if not isinstance(msg, dict):
        c.add("not_an_object", f'{where} is {json_type(msg)}; each message must be an object '
              '{"role": ..., "content": ...}')
        return None
    role = _check_role(msg, where, c)
    calls = _check_tool_calls(msg, role, where, c)
    calling = role == "assistant" and isinstance(msg.get("tool_calls"), list) and bool(msg["tool_calls"])
    if calling and not msg.get("content"):  # a reply that only calls tools has no text
        content: str | None = ""
    else:
        content = _check_content(msg, where, c)
    weight = _check_weight(msg, role, where, c)
    call_id = _check_tool_result(msg, role, where, c)
    _check_ignored({k: v for k, v in msg.items() if not (role == "tool" and k == "name")}, where, c)
    if role is None or content is None:
        return None
    name = msg.get("name") if role == "tool" and isinstance(msg.get("name"), str) else ""
    return Message(role, content, weight, json.dumps(calls) if calls else "", call_id, name)


def _check_tool_calls(msg: dict[str, Any], role: str | None, where: str, c: _Checker) -> list[dict[str, Any]]:
    """An assistant's `tool_calls`, validated and normalized: arguments as an object (how chat
    templates render them; OpenAI's files carry them as a JSON string)."""
    if "tool_calls" not in msg or msg["tool_calls"] in (None, []):
        return []
    raw = msg["tool_calls"]
    if role != "assistant":
        c.add("invalid_tool_call", f'{where} is a "{role}" message; only assistant messages make tool calls')
        return []
    if not isinstance(raw, list):
        c.add("invalid_tool_call", f"{where}.tool_calls must be an array of calls, got {json_type(raw)}")
        return []
    calls = []
    for i, call in enumerate(raw):
        entry, problem = template_call(call)
        if entry is None:
            c.add("invalid_tool_call", f"{where}.tool_calls[{i}]{problem}")
        else:
            calls.append(entry)
    return calls


def template_call(call: Any) -> tuple[dict[str, Any] | None, str]:
    """One tool call as chat templates take it, arguments as an object (OpenAI's files and
    requests carry them as a JSON string); or None and what is wrong, worded to follow the
    call's location (training data and served requests share this)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        return None, ' needs "function": {"name": "...", "arguments": "{...}"}'
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return None, (f".function.arguments is not valid JSON ({exc.msg} at character {exc.pos + 1}); "
                          "write the arguments as a JSON object")
    if not isinstance(arguments, dict):
        return None, f".function.arguments must be a JSON object, got {json_type(arguments)}"
    entry: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        entry["id"] = call["id"]
    return entry, ""


def _check_tool_result(msg: dict[str, Any], role: str | None, where: str, c: _Checker) -> str:
    """A "tool" message's `tool_call_id` (optional: single-call templates do without it)."""
    if "tool_call_id" not in msg:
        return ""
    value = msg["tool_call_id"]
    if role != "tool":
        c.add("invalid_tool_call", f'{where} is a "{role}" message; only "tool" messages answer a tool call '
              "(tool_call_id): remove it")
        return ""
    if not isinstance(value, str):
        c.add("invalid_tool_call", f"{where}.tool_call_id must be a string, got {json_type(value)}")
        return ""
    return value


def _parse_tools(obj: dict[str, Any], c: _Checker) -> str:
    """The conversation's tool definitions (OpenAI's "tools") as JSON text, validated."""
    tools = obj.get("tools")
    if tools in (None, []):
        return ""
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools):
        c.add("invalid_tool_call", '"tools" must be an array of {"type": "function", "function": {"name", '
              '"description", "parameters"}} definitions')
        return ""
    return json.dumps(tools)


def _tool_order_issues(messages: list[Message | None], c: _Checker) -> None:
    """A tool result answers a call: it must follow an assistant message that made one."""
    calling = False
    for i, m in enumerate(messages):
        if m is None:
            continue
        if m.role == "tool" and not calling:
            c.add("invalid_tool_call", f"messages[{i}] is a tool result, but no assistant tool call comes "
                  "before it; put the assistant message with its tool_calls first")
            return
        if m.role == "assistant":
            calling = bool(m.tool_calls)
        elif m.role != "tool":
            calling = False


def _parse_chat(obj: dict[str, Any], c: _Checker) -> Example | None:
    raw = obj["messages"]
    if not isinstance(raw, list):
        c.add("not_an_object", f'"messages" must be an array of {{"role", "content"}} objects, '
              f"got {json_type(raw)}")
        return None
    if not raw:
        c.add("empty_field", '"messages" is empty; add at least a user and an assistant message')
        return None
    messages = [_parse_message(m, f"messages[{i}]", c) for i, m in enumerate(raw)]
    tools = _parse_tools(obj, c)
    if c.ok:  # a broken call already said what is wrong with this conversation
        _tool_order_issues(messages, c)
    tool_keys = [key for key in TOOL_KEYS if key in obj]
    if tool_keys:
        c.add("ignored_field", f"{', '.join(json.dumps(k) for k in tool_keys)} ignored: the legacy "
              '"functions" is not read (write the definitions as "tools"), and call parallelism '
              "is what the calls themselves show", "warning")
    roles = [m["role"] for m in raw if isinstance(m, dict) and "role" in m]
    if "assistant" not in roles:
        c.add("no_assistant", "the conversation has no assistant message; add the reply the "
              "model should learn")
    if not c.ok:
        return None
    valid = tuple(m for m in messages if m is not None)
    if all(m.weight == 0 for m in valid if m.role == "assistant"):
        c.add("no_loss", 'every assistant message has "weight": 0, so this example teaches '
              "nothing; set weight 1 on the replies to learn", "warning")
    return Example("chat", c.path, c.line, messages=valid, tools=tools)


def _message_list(value: Any, where: str, c: _Checker) -> list[Message] | None:
    """A JSON array of messages (`where` names it in issues); None when it is not usable."""
    if not isinstance(value, list) or not value:
        what = "empty" if isinstance(value, list) else json_type(value)
        c.add("not_an_object" if value else "empty_field", f'{where} must be a non-empty array of '
              f'{{"role", "content"}} messages, got {what}')
        return None
    parsed = [_parse_message(m, f"{where}[{i}]", c) for i, m in enumerate(value)]
    return None if any(m is None for m in parsed) else [m for m in parsed if m is not None]


def _side(obj: dict[str, Any], key: str, role: str, c: _Checker) -> list[Message] | None:
    """`prompt` / `chosen` / `rejected`: a string (one `role` message) or a list of messages."""
    if key not in obj:
        c.add("missing_field", f'missing "{key}"; a preference pair needs "chosen" and '
              '"rejected" answers (and a "prompt", unless both answers are whole conversations)')
        return None
    value = obj[key]
    if isinstance(value, str):
        text = c.string(obj, key, f"write the {key} text")
        return [Message(role, text)] if text.strip() else None
    return _message_list(value, f'"{key}"', c)


def _answers_only(answer: list[Message], where: str, c: _Checker) -> None:
    for i, m in enumerate(answer):
        if m.role != "assistant":
            c.add("bad_role", f'{where}[{i}] is a "{m.role}" message; an answer holds assistant '
                  "messages only (the conversation before it belongs in the prompt)")


def _split_implicit(chosen: list[Message], rejected: list[Message], c: _Checker
                    ) -> tuple[list[Message], list[Message], list[Message]] | None:
    """TRL's implicit prompt: two whole conversations; their common leading turns are the prompt."""
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    while common and chosen[common - 1].role == "assistant":
        common -= 1  # the answers start after the last shared non-assistant turn
    if common == 0:
        c.add("missing_field", 'no "prompt", and "chosen" and "rejected" share no leading turns; '
              'add a "prompt" (a string or a list of messages)')
        return None
    return chosen[:common], chosen[common:], rejected[common:]


def _check_pair(prompt: list[Message], chosen: list[Message], rejected: list[Message],
                names: tuple[str, str, str], c: _Checker) -> None:
    _answers_only(chosen, names[1], c)
    _answers_only(rejected, names[2], c)
    if not any(m.role == "user" for m in prompt):
        c.add("no_user", f"{names[0]} has no user message; write what the answers respond to")
    elif prompt[-1].role == "assistant":
        c.add("bad_role", f"{names[0]} ends with an assistant message; the prompt ends with the "
              f"turn the answers reply to (put the answer in {names[1]} / {names[2]})")
    if [m.content for m in chosen] == [m.content for m in rejected]:
        c.add("no_preference", f"{names[1]} and {names[2]} are the same text, so the pair prefers "
              "nothing; make the rejected answer the worse one, or drop the row")


def _parse_openai_preference(obj: dict[str, Any], c: _Checker) -> Example | None:
    """OpenAI's preference rows: {"input": {"messages"}, "preferred_output", "non_preferred_output"}."""
    raw = obj.get("input")
    if not isinstance(raw, dict) or "messages" not in raw:
        c.add("missing_field", '"input" must be an object {"messages": [...]} holding the prompt '
              f'(got {"nothing" if raw is None else json_type(raw)})')
        prompt = None
    else:
        prompt = _message_list(raw["messages"], "input.messages", c)
        tool_keys = [key for key in TOOL_KEYS if key in raw]
        if tool_keys:
            c.add("ignored_field", f"input.{', input.'.join(tool_keys)} ignored: tool definitions "
                  "are not rendered into the training text", "warning")
    sides = []
    for key in ("preferred_output", "non_preferred_output"):
        if key not in obj:
            c.add("missing_field", f'missing "{key}"; OpenAI\'s preference rows carry both '
                  '"preferred_output" and "non_preferred_output" (each a list with one assistant message)')
            sides.append(None)
        else:
            sides.append(_message_list(obj[key], f'"{key}"', c))
    if prompt is None or sides[0] is None or sides[1] is None:
        return None
    _check_pair(prompt, sides[0], sides[1], ("input.messages", '"preferred_output"', '"non_preferred_output"'), c)
    if not c.ok:
        return None
    return Example("preference", c.path, c.line, messages=tuple(prompt), chosen=tuple(sides[0]),
                   rejected=tuple(sides[1]))


def _parse_preference(obj: dict[str, Any], c: _Checker) -> Example | None:
    """A preference pair: OpenAI's layout, or `prompt` / `chosen` / `rejected` (TRL's)."""
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return _parse_openai_preference(obj, c)
    chosen, rejected = _side(obj, "chosen", "assistant", c), _side(obj, "rejected", "assistant", c)
    prompt = _side(obj, "prompt", "user", c) if "prompt" in obj else None
    if chosen is None or rejected is None or ("prompt" in obj and prompt is None):
        return None
    if prompt is None:
        if isinstance(obj["chosen"], str) or isinstance(obj["rejected"], str):
            c.add("missing_field", 'missing "prompt"; write the input the two answers respond to')
            return None
        split = _split_implicit(chosen, rejected, c)
        if split is None:
            return None
        prompt, chosen, rejected = split
    if "completion" in obj:
        c.add("ignored_field", '"completion" ignored: a preference pair trains on "chosen" over '
              '"rejected"', "warning")
    _check_pair(prompt, chosen, rejected, ('"prompt"', '"chosen"', '"rejected"'), c)
    if not c.ok:
        return None
    return Example("preference", c.path, c.line, messages=tuple(prompt), chosen=tuple(chosen),
                   rejected=tuple(rejected))


PARSERS = {"preference": _parse_preference, "chat": _parse_chat, "prompt_completion": _parse_prompt_completion,
           "instruction": _parse_instruction, "text": _parse_text}


def _unknown_format(obj: dict[str, Any], c: _Checker) -> None:
    keys = ", ".join(json.dumps(k) for k in obj) or "none"
    hints = [hint for key, hint in FOREIGN_KEYS.items() if key in obj]
    fix = f"{hints[0]}; the formats are" if hints else "use"
    c.add("unknown_format", f"no recognized keys (found: {keys}); {fix} {FORMAT_HELP}")


def parse_record(obj: Any, path: str, line: int) -> Record:
    """One decoded JSON value -> its format, the `Example` (when valid) and its issues."""
    c = _Checker(path, line)
    if not isinstance(obj, dict):
        c.add("not_an_object", f"the line is {json_type(obj)}, not an object; each line must be "
              f"one JSON object: {FORMAT_HELP}")
        return Record(line, None, None, c.issues)
    fmt = detect_format(obj)
    if fmt is None:
        _unknown_format(obj, c)
        return Record(line, None, None, c.issues)
    return Record(line, fmt, PARSERS[fmt](obj, c), c.issues)


def _whole_file_json(lines: list[Line], path: str) -> Issue | None:
    """A pretty-printed JSON document instead of JSON Lines: one clear issue, not one per line."""
    try:
        value = json.loads("\n".join(line.text for line in lines))
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, (list, dict)):
        return None
    shape = "one JSON array" if isinstance(value, list) else "one JSON object over many lines"
    return Issue(path, lines[0].number, "not_jsonl", f"the file is {shape}; write one object per "
                 "line (JSON Lines), e.g. with: jq -c '.[]' FILE > FILE.jsonl")


def _loads(text: str) -> tuple[Any, list[str]]:
    """Decode one JSON value; also returns the keys that appear twice in one object."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj and key not in duplicates:
                duplicates.append(key)
            obj[key] = value
        return obj

    return json.loads(text, object_pairs_hook=pairs), duplicates


def _duplicate_issues(keys: list[str], path: str, line: int) -> list[Issue]:
    return [Issue(path, line, "duplicate_key", f'key "{key}" appears twice in one object; JSON '
                  "keeps only the last value, so the other is silently lost: keep one of them")
            for key in keys]


def parse_json_line(line: Line, path: str) -> Record:
    """One JSONL line -> its record (format, example, issues); data.textfile streams with it."""
    try:
        obj, duplicates = _loads(line.text)
    except json.JSONDecodeError as exc:
        msg = f"{exc.msg} at column {exc.colno}; each line must be one complete JSON object"
        return Record(line.number, None, None, [Issue(path, line.number, "invalid_json", msg)])
    except RecursionError:
        msg = "nested too deeply to parse; each line must be one JSON object"
        return Record(line.number, None, None, [Issue(path, line.number, "invalid_json", msg)])
    record = parse_record(obj, path, line.number)
    if duplicates:
        record.issues = _duplicate_issues(duplicates, path, line.number) + record.issues
        record.example = None
    return record


def jsonl_records(read: ReadResult, path: str) -> tuple[list[Record], list[Issue]]:
    """Records of a JSONL file (blank lines skipped) plus file-level issues."""
    lines = [line for line in read.lines if line.valid and line.text.strip()]
    if len(lines) > 1 and lines[0].text.lstrip().startswith(("[", "{")):
        # Only when the first line is not JSON by itself: then it may open a pretty-printed file.
        whole = None if parses_alone(lines[0].text) else _whole_file_json(lines, path)
        if whole is not None:
            return [], [whole]
    return [parse_json_line(line, path) for line in lines], []


def parses_alone(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _csv_format(header: list[str], path: str, line: int) -> tuple[Format | None, list[Issue]]:
    names = [name.strip().lower() for name in header]
    repeated = {name: names.count(name) for name in names if name and names.count(name) > 1}
    if repeated:
        listing = ", ".join(f'"{n}" ' + ("twice" if k == 2 else f"{k} times") for n, k in repeated.items())
        return None, [Issue(path, line, "csv_columns", f"the header names {listing}; a row can "
                            "keep only one value per column name: rename or drop the duplicate")]
    for fmt, columns in CSV_COLUMNS.items():
        if set(names).issuperset(columns):
            return fmt, _ignored_columns(names, fmt, path, line)
    found = ",".join(header) or "(none)"
    return None, [Issue(path, line, "csv_columns", f"the header is {found!r}; a CSV needs a "
                        "header row naming the columns prompt,completion or text")]


def _ignored_columns(names: list[str], fmt: Format, path: str, line: int) -> list[Issue]:
    ignored = [n for n in names if n and n not in CSV_COLUMNS[fmt]]
    if not ignored:
        return []
    listing = ", ".join(json.dumps(n) for n in ignored)
    return [Issue(path, line, "ignored_field", f"column(s) {listing} ignored: a {fmt} CSV reads "
                  f"only {','.join(CSV_COLUMNS[fmt])}; drop the column(s) to silence this warning",
                  "warning")]


def _csv_error(exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return (f"a field is longer than {MAX_LINE_BYTES // 2**20} MiB, the limit per example; "
                "shorten it or split the document into several rows")
    return (f"{exc}; quote fields that contain commas, quotes or newlines "
            '("a ""quoted"" word")')


def csv_records(read: ReadResult, path: str) -> tuple[list[Record], list[Issue]]:
    """Records of a CSV file: the header names the format; each row cites its first line."""
    # Whole documents in a `text` column easily pass csv's default 128 KiB field limit; a
    # field may be as long as a line may be (the same per-example bound).
    csv.field_size_limit(MAX_LINE_BYTES)
    bad = {line.number for line in read.lines if not line.valid}
    reader = csv.reader((line.text + "\n" for line in read.lines), strict=True)
    header: list[str] | None = None
    fmt: Format | None = None
    records: list[Record] = []
    issues: list[Issue] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            issues.append(Issue(path, start, "invalid_csv", _csv_error(exc)))
            continue
        if not row or bad.intersection(range(start, reader.line_num + 1)):
            continue  # blank row, or a row whose bytes were already reported as invalid UTF-8
        if header is None:
            header = [name.strip().lower() for name in row]
            fmt, header_issues = _csv_format(row, path, start)
            issues.extend(header_issues)
            if fmt is None:
                return [], issues
            continue
        records.append(_csv_row(row, header, fmt, path, start))
    if header is not None and not records and not issues:
        issues.append(Issue(path, 0, "empty_file", "the CSV has a header but no rows; add one "
                            "example per row"))
    return records, issues


def _csv_row(row: list[str], header: list[str], fmt: Format, path: str, line: int) -> Record:
    if len(row) != len(header):
        msg = (f"the row has {len(row)} field(s) but the header has {len(header)}; quote "
               "fields that contain commas")
        return Record(line, fmt, None, [Issue(path, line, "csv_fields", msg)])
    c = _Checker(path, line)
    return Record(line, fmt, PARSERS[fmt](dict(zip(header, row)), c), c.issues)


def _file_format(records: list[Record]) -> Format | None:
    """The most common format (ties: the earliest); lines of another format are the mistakes."""
    counts = Counter(r.format for r in records if r.format is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(r.format for r in records if r.format is not None and counts[r.format] == top)


def _mixed_format_issues(records: list[Record], fmt: Format, path: str) -> list[Issue]:
    first = next(r.line for r in records if r.format == fmt)
    others = [(r.line, r.format) for r in records if r.format is not None and r.format != fmt]
    return mixed_format_issues(others, fmt, first, path)


def mixed_format_issues(others: list[tuple[int, Format]], fmt: Format, first: int, path: str) -> list[Issue]:
    """One issue per (line, format) of a record whose format is not the file's `fmt` (first seen at
    line `first`)."""
    return [Issue(path, line, "mixed_formats", f"this line is {other} but the file is {fmt} "
                  f"(like line {first}); use one format per file") for line, other in others]


def parquet_records(path: Path) -> tuple[list[Record], list[Issue]]:
    """Records of a Parquet file, one per row (see data.parquet), plus file-level issues."""
    issues: list[Issue] = []
    records = [parse_record(obj, str(path), row) for row, obj in parquet_rows(path, issues)]
    return records, issues


def parse_file(path: Path) -> ParsedFile:
    """Read and validate one data file (`.csv` is CSV, `.parquet` Parquet, anything else JSON
    Lines; CSV and JSONL may be gzipped)."""
    name = str(path)
    if data_suffix(path) == ".parquet":
        records, read_issues = parquet_records(path)
        file_issues: list[Issue] = []
    else:
        read = read_lines(path)
        parse = csv_records if data_suffix(path) == ".csv" else jsonl_records
        records, file_issues = parse(read, name) if read.lines else ([], [])
        read_issues = read.issues
    fmt = _file_format(records)
    issues = read_issues + file_issues + [i for r in records for i in r.issues]
    if fmt is not None:
        issues += _mixed_format_issues(records, fmt, name)
    if not issues and not records:
        issues.append(Issue(name, 0, "empty_file", "the file has no examples; add one per line"))
    examples = [r.example for r in records if r.example is not None and r.format == fmt]
    issues.sort(key=lambda i: i.line)  # stable: per-line issues keep their order
    return ParsedFile(path, fmt, examples, issues)
