"""Turn the configured data files into tokenized train/validation sets (cached, split, recorded).

`digests` holds each file's SHA-256: the run records it, and a resume on changed data is refused.

A raw-text JSONL file is never held in memory: its examples are `textfile.TextRecords` (read
from disk on demand), its tokens a `tokenstore.TokenView` over the on-disk cache, and the split,
the windows and the counts here work on those views' index arrays. Every other file is lists,
as before. Mixing several training files materializes their drawn examples (lists again).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunecraft.data import cache
from tunecraft.data.render import IGNORE, TemplateMode, TokenizedExample, TokenizedPair, sequences, tokenize_sequences
from tunecraft.data.schema import Example
from tunecraft.data.split import split_indices, split_ranked
from tunecraft.data.textfile import TextRecords, split_keys
from tunecraft.data.tokenstore import TokenView, tokenized_documents


@dataclass
class PreparedData:
    train: Sequence[TokenizedExample]  # preference data: TokenizedPair items; raw-text JSONL: a TokenView
    val: Sequence[TokenizedExample]
    train_examples: Sequence[Example]  # raw-text JSONL: TextRecords (read on demand)
    val_examples: Sequence[Example]
    split: dict[str, Any]  # how val was obtained (file, or seeded split with line numbers)
    digests: dict[str, str] = field(default_factory=dict)  # "train" / "val" -> file SHA-256


def read_examples(path: Path) -> Sequence[Example]:
    """Validated examples of a file; raises DataError listing every error (PATH:LINE). Raw-text
    JSONL streams: `TextRecords`, read from disk when used."""
    from tunecraft.data.loader import stream_examples

    return stream_examples(path)


def tokenize_file(
    path: Path,
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int | None,
    mode: TemplateMode,
    system_prompt: str | None,
    digest: str | None = None,
) -> Sequence[TokenizedExample]:
    """Tokenize every example of `path`, reusing the on-disk cache when nothing changed.

    `digest`: the file's SHA-256 when the caller already has it. Streamed raw text
    (`TextRecords`) is tokenized batch by batch into its own cache layout and comes back as a
    `TokenView` that reads each document from disk when indexed.
    """
    if isinstance(examples, TextRecords):
        return tokenized_documents(examples, tokenizer, max_length, mode, system_prompt, digest)
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


def _val_file(path: Path, examples: Sequence[Example] | None, tokenizer: Any, max_length: int | None,
              mode: TemplateMode, system_prompt: str | None
              ) -> tuple[Sequence[TokenizedExample], Sequence[Example], str]:
    """A validation file's tokenized examples, its examples and its SHA-256."""
    examples = examples if examples is not None else read_examples(path)
    digest = cache.file_digest(path)
    return tokenize_file(path, examples, tokenizer, max_length, mode, system_prompt, digest), examples, digest


def prepare(
    train_path: Path,
    val_path: Path | None,
    tokenizer: Any,
    max_length: int | None,
    mode: TemplateMode,
    system_prompt: str | None,
    val_fraction: float,
    seed: int,
    train_examples: Sequence[Example] | None = None,
    val_examples: Sequence[Example] | None = None,
) -> PreparedData:
    """Tokenize train (and val, or a seeded split of train)."""
    train_ex = train_examples if train_examples is not None else read_examples(train_path)
    digests = {"train": cache.file_digest(train_path)}
    train_tok = tokenize_file(train_path, train_ex, tokenizer, max_length, mode, system_prompt,
                              digests["train"])
    if val_path is not None:
        val_tok, val_ex, digests["val"] = _val_file(val_path, val_examples, tokenizer, max_length, mode, system_prompt)
        split_file = {"kind": "file", "val": str(val_path)}
        return PreparedData(train_tok, val_tok, train_ex, val_ex, split_file, digests)
    train_idx, val_idx = split_examples(train_ex, val_fraction, seed)
    lines = example_lines(train_ex)
    split = {
        "kind": "split",
        "source": str(train_path),
        "seed": seed,
        "fraction": val_fraction,
        "train_lines": [lines[i] for i in train_idx],
        "val_lines": [lines[i] for i in val_idx],
    }
    return PreparedData(pick(train_tok, train_idx), pick(train_tok, val_idx), pick(train_ex, train_idx),
                        pick(train_ex, val_idx), split, digests)


def split_examples(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """`split.split_indices` by each example's content; streamed raw text is ranked in one pass
    over the file, keeping 48 bytes per document instead of its text."""
    if isinstance(examples, TextRecords):
        return split_ranked(*split_keys(examples, seed), fraction)
    return split_indices([e.key_text() for e in examples], fraction, seed)


def example_lines(examples: Sequence[Example]) -> list[int]:
    """Each example's line number (streamed raw text: from its index, without reading it)."""
    if isinstance(examples, TextRecords):
        return examples.lines.tolist()
    return [e.line for e in examples]


def example_formats(examples: Sequence[Example]) -> list[str]:
    """Each example's format (streamed raw text: all "text", without reading any)."""
    if isinstance(examples, TextRecords):
        return ["text"] * len(examples)
    return [e.format for e in examples]


def pick(items: Sequence[Any], indices: list[int]) -> Sequence[Any]:
    """The items at `indices`: a list, or for an on-disk view (TokenView, TextRecords) a view."""
    if isinstance(items, (TokenView, TextRecords)):
        return items.subset(indices)
    return [items[i] for i in indices]


def source_role(k: int) -> str:
    """The digest key of the k-th training file: "train", then "train2", "train3", ..."""
    return "train" if k == 0 else f"train{k + 1}"


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Examples each training file gives an epoch: the epoch keeps the files' total size, shared
    out by weight (largest remainders, so the counts add up to the total exactly)."""
    total, weight_sum = sum(sizes), sum(weights)
    exact = [total * w / weight_sum for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(n: int, count: int, seed: int) -> list[int]:
    """`count` indices of a file's `n` training examples: whole seeded passes first (an
    up-weighted file shows every example k times before any k+1-th), then a seeded part of one
    more (a down-weighted file: a seeded subset)."""
    rng, out = random.Random(seed), []
    while n and len(out) < count:
        order = list(range(n))
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out


@dataclass
class _Part:
    path: Path
    weight: float
    examples: list[Example]
    tokens: list[TokenizedExample]
    train: list[int]
    val: list[int]
    digest: str


def prepare_sources(
    sources: list[tuple[Path, float]],
    val_path: Path | None,
    tokenizer: Any,
    max_length: int | None,
    mode: TemplateMode,
    system_prompt: str | None,
    val_fraction: float,
    seed: int,
    train_examples: Sequence[Sequence[Example]] | None = None,
    val_examples: Sequence[Example] | None = None,
) -> PreparedData:
    """`prepare` for one or several training files mixed by weight.

    Each file is tokenized (and cached) on its own and, without a validation file, split on its
    own with the same seed, so each keeps its own held-out share. The training set is then one
    epoch's draw: `mix_counts` examples from each file (`draw`). One file is `prepare` itself.
    """
    if len(sources) == 1:
        path = sources[0][0]
        return prepare(path, val_path, tokenizer, max_length, mode, system_prompt, val_fraction, seed,
                       train_examples[0] if train_examples else None, val_examples)
    parts = []
    for k, (path, weight) in enumerate(sources):
        # A drawn epoch repeats and reorders examples: held as lists (streamed text read once).
        examples = list(train_examples[k] if train_examples else read_examples(path))
        digest = cache.file_digest(path)
        tokens = tokenize_file(path, examples, tokenizer, max_length, mode, system_prompt, digest)
        if val_path is None:
            train_idx, val_idx = split_indices([e.key_text() for e in examples], val_fraction, seed)
        else:
            train_idx, val_idx = list(range(len(examples))), []
        parts.append(_Part(path, weight, examples, tokens, train_idx, val_idx, digest))
    counts = mix_counts([len(p.train) for p in parts], [p.weight for p in parts])
    data = PreparedData([], [], [], [], {}, {source_role(k): p.digest for k, p in enumerate(parts)})
    described = []
    for k, (part, count) in enumerate(zip(parts, counts)):
        drawn = [part.train[i] for i in draw(len(part.train), count, seed + k)]
        data.train += [part.tokens[i] for i in drawn]
        data.train_examples += [part.examples[i] for i in drawn]
        data.val += [part.tokens[i] for i in part.val]
        data.val_examples += [part.examples[i] for i in part.val]
        described.append({"path": str(part.path), "weight": part.weight, "examples": len(part.examples),
                          "train_examples": len(part.train), "drawn_per_epoch": count,
                          "train_lines": [part.examples[i].line for i in part.train],
                          "val_lines": [part.examples[i].line for i in part.val]})
    data.split = {"kind": "split", "seed": seed, "fraction": val_fraction, "sources": described}
    if val_path is not None:
        data.val, data.val_examples, data.digests["val"] = _val_file(val_path, val_examples, tokenizer, max_length,
                                                                     mode, system_prompt)
        data.split = {"kind": "file", "val": str(val_path), "sources": described}
    return data


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


def fit_length(items: Sequence[TokenizedExample], examples: Sequence[Example], max_length: int,
               overlap: int) -> Sequence[TokenizedExample]:
    """Every item within `max_length`: raw-text documents split into windows (`windows`), any
    other example (a chat, a prompt and its completion, a preference pair) cut on the right,
    since splitting it would separate an answer from its question. Streamed raw text (a
    `TokenView`) gives a view of its windows: no token is read here."""
    if isinstance(items, TokenView):
        return items.windowed(max_length, overlap)
    out: list = []
    for item, example in zip(items, examples, strict=True):
        if example.format == "text" and isinstance(item, TokenizedExample):
            out.extend(windows(item, max_length, overlap))
        else:
            out.extend(truncate([item], max_length))
    return out


def sequence_lengths(items: Sequence[TokenizedExample]) -> list[int]:
    """Tokens of every sequence (a preference pair's two), from the index of an on-disk view."""
    if isinstance(items, TokenView):
        return items.lengths().tolist()
    return [len(e.input_ids) for e in sequences(items)]


def text_lengths(items: Sequence[TokenizedExample], examples: Sequence[Example]) -> list[int]:
    """Tokens of each raw-text document among `items` (what `windows` would split)."""
    if isinstance(items, TokenView):
        return items.lengths().tolist()
    return [len(t.input_ids) for t, f in zip(items, example_formats(examples)) if f == "text"]


def total_tokens(items: Sequence[TokenizedExample]) -> int:
    """Tokens of all sequences (an on-disk view counts from its index)."""
    if isinstance(items, TokenView):
        return items.token_total()
    return sum(len(e.input_ids) for e in sequences(items))


def total_loss_tokens(items: Sequence[TokenizedExample]) -> int:
    """Loss-bearing targets of all sequences (`count_loss_tokens`; an on-disk view counts from
    its labels in chunks, building no item)."""
    from tunecraft.data.batching import count_loss_tokens  # batching imports torch: only when counting

    if isinstance(items, TokenView):
        return items.loss_token_total()
    return sum(count_loss_tokens(e) for e in sequences(items))
