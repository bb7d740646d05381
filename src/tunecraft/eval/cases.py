"""Evaluation cases: a conversation to answer and the reference answer, from any chat-like format.

The reference is the last assistant turn; everything before it is the prompt. The same cases
feed generation (prompt only) and held-out loss (prompt + reference, loss on the reference).
Also reads back which rows trained a run (`data/split.json`), for few-shot examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunecraft import rundir
from tunecraft.data.loader import load_examples
from tunecraft.data.render import to_messages
from tunecraft.data.schema import Example, Message
from tunecraft.errors import DataError


@dataclass(frozen=True)
class EvalCase:
    messages: list[dict[str, str]]  # the conversation up to (not including) the reference answer
    reference: str
    where: str  # PATH:LINE of the source row

    @property
    def prompt_text(self) -> str:
        """The last user turn (what a person reads as 'the question')."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else ""


def case_from_example(example: Example) -> EvalCase | None:
    """The case of one example, or None when it has no assistant answer (raw text)."""
    if example.format == "text":
        return None
    msgs = to_messages(example)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]
    return EvalCase(prompt, msgs[last]["content"], f"{example.path}:{example.line}")


def load_cases(path: Path, limit: int | None = None, examples: Sequence[Example] | None = None) -> list[EvalCase]:
    """Cases of a test file (the first `limit` answerable rows; `examples`: the file's, when the
    caller has read it already); raises DataError when none."""
    rows = examples if examples is not None else load_examples(path)
    cases = [c for c in (case_from_example(e) for e in rows) if c is not None]
    if not cases:
        raise DataError(
            f"{path}: no example with an assistant answer to compare against (raw text rows "
            "cannot be scored by generation; a file of raw text only is scored by held-out loss; "
            "use chat, prompt/completion or instruction rows)"
        )
    return cases[:limit] if limit else cases


def scoring_example(case: EvalCase) -> Example:
    """A chat Example whose only loss-bearing turn is the reference answer.

    Earlier assistant turns (history, few-shot answers) get weight 0 so that held-out loss
    measures the reference answer alone.
    """
    turns = case.messages
    messages = [Message(m["role"], m["content"], 0 if m["role"] == "assistant" else 1) for m in turns]
    messages.append(Message("assistant", case.reference, 1))
    path, _, line = case.where.rpartition(":")
    return Example("chat", path, int(line) if line.isdigit() else 0, tuple(messages))


def training_examples(run_dir: Path, train: str | list[Any] | None) -> tuple[list[Example], str]:
    """The rows that trained the run (from data/split.json), or ([], why not). `train`: the
    config's data.train, one file or several (each distinct row once, whatever its weight)."""
    if not train:
        return [], "the run's config names no training file"
    paths = [Path(train)] if isinstance(train, str) else [Path(s.path) for s in train]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        return [], f"{missing[0]}: training file not found (run eval from where you ran train)"
    split = rundir.read_split(run_dir)
    described = split.get("sources") or [split]
    examples: list[Example] = []
    for k, path in enumerate(paths):
        rows = load_examples(path)
        if split.get("kind") == "split" and k < len(described):
            # Only the rows that trained: the held-out validation rows must not become few-shot.
            lines = set(described[k].get("train_lines", []))
            rows = [e for e in rows if e.line in lines]
        examples += rows
    return examples, ""
