"""The in-memory form of one training example, whatever file format it came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["chat", "prompt_completion", "instruction", "text", "preference"]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: str  # one of ROLES
    content: str
    weight: int = 1  # assistant turns only: 0 excludes the turn from the loss
    # Tool calling, kept as JSON text so a message stays hashable: an assistant's calls (OpenAI's
    # list of {"id", "type": "function", "function": {"name", "arguments"}}), or for a "tool"
    # message the id of the call it answers and the function's name.
    tool_calls: str = ""
    tool_call_id: str = ""
    name: str = ""

    def calls(self) -> list[dict[str, Any]]:
        """The tool calls as a chat template expects them (arguments as an object)."""
        return json.loads(self.tool_calls) if self.tool_calls else []


@dataclass(frozen=True)
class Example:
    """One validated example. Exactly the fields of its `format` are set.

    `path` and `line` point back to the source (1-based line; CSV: the physical line of the row)
    so that every later message can cite it.
    """

    format: Format
    path: str
    line: int
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    completion: str = ""
    instruction: str = ""
    input: str = ""
    output: str = ""
    text: str = ""
    # preference pairs: `messages` is the prompt (ending before the answers), `chosen` and
    # `rejected` the two answers (assistant messages), the first one preferred.
    chosen: tuple[Message, ...] = ()
    rejected: tuple[Message, ...] = ()
    tools: str = ""  # chat: the tool definitions (OpenAI's "tools" list) as JSON text, "" for none
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def key_text(self) -> str:
        """The example's content as one string (for duplicate and leakage checks)."""
        if self.format == "chat":
            return "\n".join(f"{m.role}: {m.content}{m.tool_calls}" for m in self.messages)
        if self.format == "prompt_completion":
            return f"{self.prompt}\n{self.completion}"
        if self.format == "instruction":
            return f"{self.instruction}\n{self.input}\n{self.output}"
        if self.format == "preference":
            sides = [self.messages, self.chosen, self.rejected]
            return "\n--\n".join("\n".join(f"{m.role}: {m.content}" for m in side) for side in sides)
        return self.text

    def prompt_text(self) -> str:
        """The input side only (what a leak of the question into the test set looks like)."""
        if self.format in ("chat", "preference"):
            return "\n".join(m.content for m in self.messages if m.role != "assistant")
        if self.format == "prompt_completion":
            return self.prompt
        if self.format == "instruction":
            return f"{self.instruction}\n{self.input}"
        return self.text


@dataclass(frozen=True)
class Issue:
    """A problem found in a data file, printed as `PATH:LINE: code: message`."""

    path: str
    line: int  # 0 when the problem is about the whole file
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.code}: {self.message}"
