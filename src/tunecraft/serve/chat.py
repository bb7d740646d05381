"""`tunecraft chat`: an interactive terminal chat that streams tokens from a run or a model.

Prompts go through the engine's `chat_prompt`, i.e. the exact chat template, system prompt and
tokenization used in training; generation stops at the end-of-turn token. A closed-label run
answers with a label of its set and its probability (`--no-label-constraint`: free text).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from tunecraft.serve.engine import LoadedModel, SamplingParams, classify, load_target, stream

HELP = "Type a message. Commands: /reset (forget the conversation), /exit (or Ctrl-D)."


def chat_loop(
    lm: LoadedModel,
    params: SamplingParams,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    system: str | None = None,
    label_constraint: bool = True,
) -> list[dict[str, Any]]:
    """Run until /exit or end of input; returns the conversation (for tests and transcripts)."""
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    constrained = label_constraint and lm.labels is not None
    out.write(f"chatting with {lm.name}. {HELP}\n")
    if constrained and lm.labels is not None:
        out.write(f"answers are one of its {len(lm.labels.labels)} labels, with their probability\n")
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
        if constrained:
            label = classify(lm, [lm.chat_prompt(history)], params)[0]
            note = f"(p={label.confidence:.2f}, below the threshold {label.threshold:.2f}: was {label.model_label})" \
                if label.rejected else f"(p={label.confidence:.2f})"
            out.write(f"{label.label}  {note}\n")
            history.append({"role": "assistant", "content": label.label})
            continue
        answer = ""
        for delta in stream(lm, lm.chat_prompt(history), params):
            answer += delta
            out.write(delta)
            out.flush()
        out.write("\n")
        history.append({"role": "assistant", "content": answer})


def run_chat(target: str, max_tokens: int, temperature: float, system: str | None, trust_remote_code: bool = False,
             label_constraint: bool = True) -> None:
    """`tunecraft chat`: a model's own code runs only when this command's flag says so."""
    lm = load_target(target, trust_remote_code=trust_remote_code)
    chat_loop(lm, SamplingParams(max_tokens=max_tokens, temperature=temperature), system=system,
              label_constraint=label_constraint)
