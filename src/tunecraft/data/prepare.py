"""Turn the configured data files into tokenized train/validation sets (cached, split, recorded).

`digests` holds each file's SHA-256: the run records it, and a resume on changed data is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft.data import cache
from tunecraft.data.render import IGNORE, TemplateMode, TokenizedExample, TokenizedPair, tokenize_sequences
from tunecraft.data.schema import Example
from tunecraft.data.split import split_indices


@dataclass
class PreparedData:
    train: list[TokenizedExample]  # preference data: TokenizedPair items
    val: list[TokenizedExample]
    train_examples: list[Example]
    val_examples: list[Example]
    split: dict[str, Any]  # how val was obtained (file, or seeded split with line numbers)
    digests: dict[str, str] = field(default_factory=dict)  # "train" / "val" -> file SHA-256


def read_examples(path: Path) -> list[Example]:
    """Validated examples of a file; raises DataError listing every error (PATH:LINE)."""
    from tunecraft.data.loader import load_examples

    return load_examples(path)


def tokenize_file(
    path: Path,
    examples: list[Example],
    tokenizer: Any,
    max_length: int | None,
    mode: TemplateMode,
    system_prompt: str | None,
    digest: str | None = None,
) -> list[TokenizedExample]:
    """Tokenize every example of `path`, reusing the on-disk cache when nothing changed.

    `digest`: the file's SHA-256 when the caller already has it.
    """
    key = cache.cache_key(
        {
            "file": digest or cache.file_digest(path),
            "tokenizer": cache.tokenizer_fingerprint(tokenizer),
            "mode": mode,
            "system": system_prompt,
            "max_length": max_length,
        }
    )
    pairs = bool(examples) and examples[0].format == "preference"
    per = 2 if pairs else 1  # a pair is cached as its two sequences, chosen then rejected
    cached = cache.load_cached(key)
    if cached is None or len(cached) != per * len(examples):
        cached = [t for e in examples for t in tokenize_sequences(e, tokenizer, max_length, mode, system_prompt)]
        cache.store(key, cached)
    if pairs:
        return [TokenizedPair(cached[i], cached[i + 1]) for i in range(0, len(cached), 2)]  # type: ignore[misc]
    return cached


def prepare(
    train_path: Path,
    val_path: Path | None,
    tokenizer: Any,
    max_length: int | None,
    mode: TemplateMode,
    system_prompt: str | None,
    val_fraction: float,
    seed: int,
    train_examples: list[Example] | None = None,
    val_examples: list[Example] | None = None,
) -> PreparedData:
    """Tokenize train (and val, or a seeded split of train)."""
    train_ex = train_examples if train_examples is not None else read_examples(train_path)
    digests = {"train": cache.file_digest(train_path)}
    train_tok = tokenize_file(train_path, train_ex, tokenizer, max_length, mode, system_prompt,
                              digests["train"])
    if val_path is not None:
        val_ex = val_examples if val_examples is not None else read_examples(val_path)
        digests["val"] = cache.file_digest(val_path)
        val_tok = tokenize_file(val_path, val_ex, tokenizer, max_length, mode, system_prompt,
                                digests["val"])
        split_file = {"kind": "file", "val": str(val_path)}
        return PreparedData(train_tok, val_tok, train_ex, val_ex, split_file, digests)
    train_idx, val_idx = split_indices([e.key_text() for e in train_ex], val_fraction, seed)
    split = {
        "kind": "split",
        "source": str(train_path),
        "seed": seed,
        "fraction": val_fraction,
        "train_lines": [train_ex[i].line for i in train_idx],
        "val_lines": [train_ex[i].line for i in val_idx],
    }
    return PreparedData(
        [train_tok[i] for i in train_idx],
        [train_tok[i] for i in val_idx],
        [train_ex[i] for i in train_idx],
        [train_ex[i] for i in val_idx],
        split,
        digests,
    )


def truncate(examples: list[TokenizedExample], max_length: int) -> list[TokenizedExample]:
    """Cut examples to `max_length` tokens on the right (the cache holds them untruncated);
    a preference pair's two sequences each."""
    out: list = []
    for e in examples:
        if isinstance(e, TokenizedPair):
            chosen, rejected = truncate([e.chosen, e.rejected], max_length)
            out.append(TokenizedPair(chosen, rejected, e.ref))
            continue
        if len(e.input_ids) <= max_length:
            out.append(e)
        else:
            cut = len(e.input_ids) - max_length
            out.append(
                TokenizedExample(e.input_ids[:max_length], e.labels[:max_length], e.path, e.line, cut)
            )
    return out




def window_overlap(max_length: int, asked: int | None) -> int:
    """Tokens each window repeats from the previous one (auto: an eighth of the window); at most
    half a window, so every window brings new tokens."""
    value = max_length // 8 if asked is None else asked
    return max(0, min(value, max_length // 2))


def windows(e: TokenizedExample, max_length: int, overlap: int) -> list[TokenizedExample]:
    """A raw-text document longer than `max_length` as overlapping windows instead of one cut.

    Each window after the first starts `overlap` tokens before the previous one ended, so its
    first tokens are predicted with context; those repeated tokens bear no loss (IGNORE), so
    every token of the document bears loss exactly once, as in one long sequence.
    """
    n = len(e.input_ids)
    if n <= max_length:
        return [e]
    step, out, start = max_length - overlap, [], 0
    while True:
        end = min(n, start + max_length)
        labels = list(e.labels[start:end])
        if start:
            labels[:overlap] = [IGNORE] * min(overlap, len(labels))
        out.append(TokenizedExample(list(e.input_ids[start:end]), labels, e.path, e.line, 0))
        if end == n:
            return out
        start += step


def window_count(n_tokens: int, max_length: int, overlap: int) -> int:
    """How many windows `windows` makes of a document of `n_tokens` tokens."""
    if n_tokens <= max_length:
        return 1
    return 1 + -(-(n_tokens - max_length) // (max_length - overlap))


def fit_length(items: list[TokenizedExample], examples: list[Example], max_length: int,
               overlap: int) -> list[TokenizedExample]:
    """Every item within `max_length`: raw-text documents split into windows (`windows`), any
    other example (a chat, a prompt and its completion, a preference pair) cut on the right,
    since splitting it would separate an answer from its question."""
    out: list = []
    for item, example in zip(items, examples, strict=True):
        if example.format == "text" and isinstance(item, TokenizedExample):
            out.extend(windows(item, max_length, overlap))
        else:
            out.extend(truncate([item], max_length))
    return out
