"""Token statistics of a dataset, measured exactly as training tokenizes it.

Each example goes through `render.tokenize_sequences` (the model's tokenizer and chat template,
the same loss mask as training; a preference pair counts both of its sequences), so the counts
here are the counts training will see. Streamed raw text (`textfile.TextRecords`) is tokenized
into the cache entry training reads (`tokenstore`), and counted from that entry's index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from jinja2 import TemplateError

from tunecraft.data.prepare import window_overlap, windows
from tunecraft.data.render import IGNORE, TemplateMode, tokenize_sequences
from tunecraft.data.schema import Example, Issue
from tunecraft.data.textfile import TextRecords
from tunecraft.data.tokenstore import TokenView, tokenized_documents
from tunecraft.errors import DataError

MAX_LISTED = 10  # line numbers named in one message


@dataclass(frozen=True)
class TokenStats:
    examples: int
    tokens: int  # tokens training sees (after truncation to max_length)
    loss_tokens: int  # loss-bearing tokens training sees
    p50: int  # length percentiles of the full (untruncated) examples, in tokens
    p90: int
    p99: int
    max: int
    max_length: int
    too_long: int  # examples longer than max_length that get cut (raw text is split instead)
    tokens_cut: int  # tokens removed by truncation, over all examples
    too_long_lines: list[int] = field(default_factory=list)
    no_loss_lines: list[int] = field(default_factory=list)  # no loss-bearing token left
    split_documents: int = 0  # raw-text documents longer than max_length, split into windows
    windows: int = 0  # the windows those documents became
    window_overlap: int = 0  # tokens each window repeats from the one before (context, no loss)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile (an actual example length, never an interpolation)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def token_stats(
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int,
    mode: TemplateMode = "auto",
    system_prompt: str | None = None,
    overlap: int | None = None,
) -> tuple[TokenStats, list[Issue]]:
    """Statistics of `examples`; examples the template cannot render become `template_error`s.
    Raw-text documents longer than `max_length` count as the windows training makes of them
    (`overlap`: data.window_overlap, None for auto)."""
    if isinstance(examples, TextRecords):  # untruncated, as training tokenizes: one cache entry for both
        documents = tokenized_documents(examples, tokenizer, None, mode, system_prompt)
        return document_stats(documents, max_length, window_overlap(max_length, overlap)), []
    lengths: list[int] = []
    tokens = loss = cut = 0
    split = made = 0
    repeat = window_overlap(max_length, overlap)
    too_long: list[int] = []
    no_loss: list[int] = []
    issues: list[Issue] = []
    for ex in examples:
        try:
            toks = tokenize_sequences(ex, tokenizer, None, mode, system_prompt)
        except (DataError, TemplateError) as exc:
            issues.append(Issue(ex.path, ex.line, "template_error", f"the model's chat template "
                                f"cannot render this example: {_reason(exc)}"))
            continue
        if ex.format == "text" and toks[0].n_tokens > max_length:
            lengths.append(toks[0].n_tokens)
            parts = windows(toks[0], max_length, repeat)
            split, made = split + 1, made + len(parts)
            tokens += sum(p.n_tokens for p in parts)
            loss += sum(p.n_loss for p in parts)
            continue
        for tok in toks:  # a preference pair: both sequences count (training runs both)
            tokens, loss, cut = _count(ex, tok, max_length, (tokens, loss, cut), lengths, too_long, no_loss)
    lengths.sort()
    stats = TokenStats(
        examples=len(examples) - len(issues), tokens=tokens, loss_tokens=loss,
        p50=percentile(lengths, 50), p90=percentile(lengths, 90), p99=percentile(lengths, 99),
        max=lengths[-1] if lengths else 0, max_length=max_length,
        too_long=len(too_long), tokens_cut=cut, too_long_lines=too_long, no_loss_lines=no_loss,
        split_documents=split, windows=made, window_overlap=repeat if split else 0,
    )
    return stats, issues


def document_stats(documents: TokenView, max_length: int, overlap: int) -> TokenStats:
    """`token_stats` of raw-text documents on disk, from the entry's index (no token is read):
    a document's windows together bear exactly its loss tokens (each once), and short ones are
    counted whole, so per-document lengths and loss counts are all it takes."""
    lengths = np.sort(documents.lengths())  # (D,) tokens per document
    parts = documents.windowed(max_length, overlap)
    split = int((lengths > max_length).sum())
    ordered = lengths.tolist()
    return TokenStats(
        examples=len(documents), tokens=parts.token_total(),
        loss_tokens=int(documents.store.loss[documents.docs].sum()),
        p50=percentile(ordered, 50), p90=percentile(ordered, 90), p99=percentile(ordered, 99),
        max=ordered[-1] if ordered else 0, max_length=max_length, too_long=0, tokens_cut=0,
        split_documents=split, windows=len(parts) - (len(documents) - split), window_overlap=overlap if split else 0,
    )


def _count(ex: Example, tok: Any, max_length: int, sums: tuple[int, int, int], lengths: list[int],
           too_long: list[int], no_loss: list[int]) -> tuple[int, int, int]:
    """Add one token sequence to the running counts; returns (tokens, loss tokens, tokens cut)."""
    tokens, loss, cut = sums
    kept = tok.labels[:max_length]
    n_loss = sum(1 for t in kept if t != IGNORE)
    lengths.append(tok.n_tokens)
    tokens += min(tok.n_tokens, max_length)
    loss += n_loss
    if tok.n_tokens > max_length:
        if not too_long or too_long[-1] != ex.line:
            too_long.append(ex.line)
        cut += tok.n_tokens - max_length
    if n_loss == 0 and tok.n_loss > 0 and (not no_loss or no_loss[-1] != ex.line):
        no_loss.append(ex.line)  # all-weight-0 chats are reported when parsed
    return tokens, loss, cut


def _reason(exc: Exception) -> str:
    text = str(exc)
    # render.py's DataError starts with "PATH:LINE: "; the issue already says where.
    return text.split(": ", 1)[1] if isinstance(exc, DataError) and ": " in text else text


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_LISTED])
    return shown + (f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")


def length_issues(stats: TokenStats, path: str) -> list[Issue]:
    """Warnings about truncation: how many examples, how many tokens, which lines."""
    issues = []
    if stats.too_long:
        issues.append(Issue(
            path, 0, "too_long",
            f"{stats.too_long} of {stats.examples} examples are longer than max length "
            f"{stats.max_length} tokens (longest: {stats.max}); truncation would cut "
            f"{stats.tokens_cut} tokens (lines {_lines(stats.too_long_lines)}). Raise "
            "--max-length, or shorten or split these examples", "warning",
        ))
    if stats.no_loss_lines:
        issues.append(Issue(
            path, 0, "no_loss_after_truncation",
            f"{len(stats.no_loss_lines)} examples keep no loss-bearing token within "
            f"{stats.max_length} tokens, so they teach nothing (lines "
            f"{_lines(stats.no_loss_lines)}); shorten their prompts or raise --max-length",
            "warning",
        ))
    return issues
