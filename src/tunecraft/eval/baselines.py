"""The prompt-engineered baseline: a system prompt describing the task plus k few-shot turns.

Built automatically from the run's training split, so it costs the user nothing: the system
prompt states the output format inferred from the training answers (JSON keys in order, the
closed set of each label-like field, or the label set, or the typical answer length), and the
few-shot turns are k training exchanges chosen to be diverse (different labels first, then
the least similar answers). `--prompt-file` replaces the system prompt with the user's own.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunecraft.eval.cases import EvalCase
from tunecraft.eval.metrics import AnswerKind, is_closed_set, parse_json_object, read_label, token_f1

CANDIDATES = 200  # training rows considered for few-shot (a seeded sample: selection is O(k n))


@dataclass(frozen=True)
class PromptSpec:
    """What the prompted baseline puts before each test conversation."""

    system: str
    shots: list[EvalCase] = field(default_factory=list)
    source: str = "auto"  # "auto" or the prompt file's path

    def prefix(self) -> list[dict[str, str]]:
        """System message and few-shot turns, as chat messages."""
        out = [{"role": "system", "content": self.system}]
        for shot in self.shots:
            out.extend(shot.messages)
            out.append({"role": "assistant", "content": shot.reference})
        return out

    def conversation(self, case: EvalCase) -> list[dict[str, str]]:
        """The test conversation behind the prefix (its own system prompt joins ours)."""
        prefix = self.prefix()
        own = [m for m in case.messages if m["role"] == "system"]
        if own:
            prefix[0] = {"role": "system", "content": self.system + "\n\n" + own[0]["content"]}
        return prefix + [m for m in case.messages if m["role"] != "system"]

    def to_json(self) -> dict[str, Any]:
        return {"system": self.system, "source": self.source, "few_shot": [s.where for s in self.shots]}


# ----------------------------------------------------------------------------- system prompt


def _json_fields(answers: Sequence[str], kind: AnswerKind) -> list[str]:
    """One line per JSON key: its closed set of values, or a sample of its free text."""
    objects = [o for o in (parse_json_object(a) for a in answers) if o is not None]
    lines = []
    for key in kind.json_keys:
        values = [o[key] for o in objects if key in o]
        if values and all(isinstance(v, str) for v in values) and is_closed_set(values):
            ranked = [v for v, _ in Counter(values).most_common()]
            lines.append(f'- "{key}": one of ' + ", ".join(f'"{v}"' for v in ranked))
        elif values and all(isinstance(v, str) for v in values):
            words = sorted(len(v.split()) for v in values)
            lines.append(f'- "{key}": text, about {words[len(words) // 2]} words')
        else:
            kinds = sorted({type(v).__name__ for v in values}) or ["value"]
            lines.append(f'- "{key}": a {"/".join(kinds)}')
    return lines


def describe_task(answers: Sequence[str], kind: AnswerKind) -> str:
    """A system prompt stating the expected answer format, inferred from training answers."""
    head = "You answer messages for a specific task. Follow the output format exactly."
    if kind.kind == "json":
        keys = ", ".join(f'"{k}"' for k in kind.json_keys)
        body = [
            "Reply with exactly one line of JSON and nothing else (no code fence, no explanation):",
            f"an object with the keys {keys}, in this order.",
            *_json_fields(answers, kind),
        ]
    elif kind.kind == "label":
        body = ["Reply with exactly one of these labels and nothing else: " + ", ".join(kind.labels) + "."]
    else:
        words = sorted(len(a.split()) for a in answers) or [0]
        body = [f"Reply in the style of the example answers, typically about {words[len(words) // 2]} words."]
    return "\n".join([head, *body])


# ----------------------------------------------------------------------------- few-shot


def pick_shots(cases: Sequence[EvalCase], kind: AnswerKind, k: int, seed: int = 0) -> list[EvalCase]:
    """k diverse training cases: unseen labels first, then the answer least like those chosen.

    Single-turn cases are preferred, and among equally dissimilar ones the shortest: few-shot
    turns are paid for in every prompt's length.
    """
    if k <= 0 or not cases:
        return []
    pool = [c for c in cases if len(c.messages) == 1] or list(cases)
    rng = random.Random(seed)
    pool = rng.sample(pool, min(len(pool), CANDIDATES))
    chosen: list[EvalCase] = []
    labels: set[str] = set()
    while pool and len(chosen) < k:
        def rank(c: EvalCase) -> tuple[bool, float, int]:
            seen = kind.has_labels and read_label(c.reference, kind) in labels
            similarity = max((token_f1(c.reference, s.reference) for s in chosen), default=0.0)
            return (seen, round(similarity, 1), len(c.prompt_text) + len(c.reference))

        best = min(pool, key=rank)  # min() keeps the first of ties: the seeded order decides
        pool.remove(best)
        chosen.append(best)
        if kind.has_labels:
            labels.add(read_label(best.reference, kind))
    return chosen


def build_prompt(
    train_cases: Sequence[EvalCase],
    kind: AnswerKind,
    k: int,
    seed: int = 0,
    prompt_file_text: str | None = None,
    prompt_file: str | None = None,
) -> PromptSpec:
    """The prompted baseline's system prompt and few-shot turns."""
    if prompt_file_text is not None:
        system, source = prompt_file_text.strip(), prompt_file or "prompt file"
    else:
        system, source = describe_task([c.reference for c in train_cases], kind), "auto"
    return PromptSpec(system, pick_shots(train_cases, kind, k, seed), source)
