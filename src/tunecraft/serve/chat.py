"""`tunecraft chat`: an interactive terminal chat that streams tokens from a run or a model.

Prompts go through the engine's `chat_prompt`, i.e. the exact chat template, system prompt and
tokenization used in training; generation stops at the end-of-turn token.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tunecraft.serve.engine import LoadedModel, SamplingParams, load_target, stream

HELP = "Type a message. Commands: /reset (forget the conversation), /exit (or Ctrl-D)."


def chat_loop(
    lm: LoadedModel,
    params: SamplingParams,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Run until /exit or end of input; returns the conversation (for tests and transcripts)."""
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    out.write(f"chatting with {lm.name}. {HELP}\n")
    while True:
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return history
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return history
        if text == "/reset":
            history = history[:1] if system else []
            out.write("(conversation cleared)\n")
            continue
        history.append({"role": "user", "content": text})
        out.write("bot> ")
        out.flush()
        answer = ""
        for delta in stream(lm, lm.chat_prompt(history), params):
            answer += delta
            out.write(delta)
            out.flush()
        out.write("\n")
        history.append({"role": "assistant", "content": answer})


def run_chat(target: str, max_tokens: int, temperature: float, system: str | None, trust_remote_code: bool = False) -> None:
    """`tunecraft chat`: a model's own code runs only when this command's flag says so."""
    lm = load_target(target, trust_remote_code=trust_remote_code)
    chat_loop(lm, SamplingParams(max_tokens=max_tokens, temperature=temperature), system=system)
