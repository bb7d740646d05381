"""Duplicates within a file and train/validation leakage (exact and near-duplicate pairs).

Exact copies are found by comparing the examples' text. Near-duplicates: each example becomes the
set of words of its normalized text (Unicode NFKC, case-folded, punctuation removed) and pairs
whose Jaccard similarity reaches `NEAR_THRESHOLD` are reported. Candidates come from MinHash
signatures with locality-sensitive hashing (numpy, vectorized: 10k x 3k examples take about a
second on one core); every candidate is then verified with the exact Jaccard similarity, so no
pair below the threshold is ever reported.

Memory stays bounded for a streamed raw-text corpus (a sequence that is not a list, read from
disk on demand): exact copies are compared by 16-byte digests, signatures are computed
MINHASH_WORDS words at a time, and word sets are built when used, never all held.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tunecraft.data.schema import Example, Issue

# Jaccard similarity of word sets at or above which two examples count as near-duplicates.
# 0.8 catches a changed word in any example of 9+ distinct words ((n-1)/(n+1) >= 0.8), and any
# change of casing, punctuation or spacing (identical after normalization, similarity 1.0), while
# different examples on the same topic stay far below it (typically 0.1-0.5).
NEAR_THRESHOLD = 0.8
# LSH banding: a pair with similarity J becomes a candidate with probability 1 - (1 - J^6)^24:
# > 0.999 at J = 0.8 and 0.99 at J = 0.75, but 0.0015 at J = 0.2 (so few pairs need checking).
BANDS, ROWS = 24, 6
# Candidates whose signature agreement (an estimate of J, std ~0.035 at 144 hashes) is this far
# below the threshold are dropped before the exact check: a > 4 sigma margin, it loses nothing.
ESTIMATE_MARGIN = 0.15
SEED = 20240611  # fixed: the same data must give the same report on every run
# Prompts shorter than this (in distinct words) are not compared alone: "hi" or "thanks" repeat
# across any chat dataset without being a leak.
MIN_PROMPT_WORDS = 5
MAX_LISTED = 5  # other lines named in one message; the rest are counted
# Words (summed over sets) per MinHash chunk: the (16, words) gathers and the (144, distinct
# words) hash table stay within ~60 MB however large the corpus.
MINHASH_WORDS = 100_000
_WORD = re.compile(r"\w+")

MatchKind = Literal["exact", "near", "prompt"]


@dataclass(frozen=True)
class Match:
    """Example at `line` repeats the one at `other_line` (earlier in the file, or in train)."""

    line: int
    other_line: int
    kind: MatchKind  # exact: same content; near: similar content; prompt: similar prompt only
    similarity: float  # Jaccard similarity of the normalized word sets (1.0 for exact)


def normalize(text: str) -> str:
    """Casing, punctuation, spacing and Unicode variants removed: what a reader sees as 'same'."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def content_text(example: Example) -> str:
    """What makes the example itself; a system prompt shared by every chat is left out."""
    if example.format == "chat":
        return "\n".join(m.content for m in example.messages if m.role != "system")
    return example.key_text()


def prompt_only(example: Example) -> str:
    """The input side, without system prompts (empty for raw text, whose 'prompt' is itself)."""
    if example.format in ("chat", "preference"):
        return "\n".join(m.content for m in example.messages if m.role == "user")
    if example.format == "text":
        return ""
    return example.prompt_text()


def word_set(text: str) -> frozenset[str]:
    return frozenset(normalize(text).split())


def _word_ids(sets: Sequence[frozenset[str]]) -> tuple[np.ndarray, list[str]]:
    """All words of all sets as ids into a vocabulary, concatenated set after set."""
    vocab: dict[str, int] = {}
    ids = np.fromiter(
        (vocab.setdefault(word, len(vocab)) for s in sets for word in s),
        dtype=np.int64,
        count=sum(len(s) for s in sets),
    )
    return ids, list(vocab)


def _stable_hashes(words: list[str]) -> np.ndarray:
    """32-bit hashes that do not change between runs (Python's hash() is salted per process)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=4).digest(), "little")
         for w in words),
        dtype=np.uint64,
        count=len(words),
    )


def minhash(sets: Sequence[frozenset[str]]) -> np.ndarray:
    """(N, BANDS * ROWS) uint32 MinHash signatures of non-empty sets, MINHASH_WORDS words at a
    time (a set's signature depends on its words alone, so chunks change nothing)."""
    _, sig = _signatures(sets)
    return sig


def _signatures(sets: Iterable[frozenset[str]]) -> tuple[list[int], np.ndarray]:
    """(positions of the non-empty sets, their signatures), in one pass over `sets`."""
    kept: list[int] = []
    parts: list[np.ndarray] = [np.empty((0, BANDS * ROWS), dtype=np.uint32)]
    chunk: list[frozenset[str]] = []
    words = 0
    for i, s in enumerate(sets):
        if not s:
            continue
        kept.append(i)
        chunk.append(s)
        words += len(s)
        if words >= MINHASH_WORDS:
            parts.append(_minhash_chunk(chunk))
            chunk, words = [], 0
    if chunk:
        parts.append(_minhash_chunk(chunk))
    return kept, np.concatenate(parts)


def _minhash_chunk(sets: Sequence[frozenset[str]]) -> np.ndarray:
    """(N, BANDS * ROWS) uint32 signatures of non-empty sets, all at once."""
    rng = np.random.default_rng(SEED)
    k = BANDS * ROWS
    # Multiply-shift hashing: (a * x + b) mod 2^64, top 32 bits; numpy uint64 arithmetic wraps.
    a = rng.integers(1, 2**63, size=(k, 1), dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=(k, 1), dtype=np.uint64)
    ids, vocab = _word_ids(sets)
    # Hash each distinct word once: (k, V), then gather per occurrence and take per-set minima.
    table = ((_stable_hashes(vocab)[None, :] * a + b) >> np.uint64(32)).astype(np.uint32)
    starts = np.cumsum([0] + [len(s) for s in sets[:-1]]).astype(np.int64)
    sig = np.empty((k, len(sets)), dtype=np.uint32)
    for c in range(0, k, 16):  # 16 hash functions at a time bounds memory to (16, words)
        sig[c : c + 16] = np.minimum.reduceat(table[c : c + 16, ids], starts, axis=1)
    return np.ascontiguousarray(sig.T)


def _band_keys(sig: np.ndarray, band: int) -> np.ndarray:
    """One uint64 per row for a band (a random linear mix; a rare false collision only adds a
    candidate, which the exact check then rejects)."""
    rows = sig[:, band * ROWS : (band + 1) * ROWS].astype(np.uint64)
    mix = np.random.default_rng(SEED + band).integers(1, 2**63, size=ROWS, dtype=np.uint64)
    return (rows * mix).sum(axis=1, dtype=np.uint64)


def _band_pairs(left_keys: np.ndarray, right_keys: np.ndarray) -> np.ndarray:
    """Codes i * len(right) + j of all (i, j) with equal keys, by sorting (no Python loop)."""
    order = np.argsort(left_keys, kind="stable")
    sorted_keys = left_keys[order]
    lo = np.searchsorted(sorted_keys, right_keys, "left")
    counts = np.searchsorted(sorted_keys, right_keys, "right") - lo
    j = np.repeat(np.arange(len(right_keys), dtype=np.int64), counts)
    offset = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    i = order[np.arange(counts.sum(), dtype=np.int64) + offset]
    return i.astype(np.int64) * len(right_keys) + j


def _sorted_unique(codes: np.ndarray) -> np.ndarray:
    # Sorting beats np.unique's hash path on millions of int64 codes (templated data).
    codes = np.sort(codes)
    return codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if len(codes) else codes


def _candidates(left_sig: np.ndarray, right_sig: np.ndarray, threshold: float) -> np.ndarray:
    """(M, 2) index pairs that share a band and whose signatures agree enough."""
    parts = [_band_pairs(_band_keys(left_sig, band), _band_keys(right_sig, band)) for band in range(BANDS)]
    codes = _sorted_unique(np.concatenate(parts))
    pairs = np.stack([codes // len(right_sig), codes % len(right_sig)], axis=1)
    return _agreeing(left_sig, right_sig, pairs, threshold - ESTIMATE_MARGIN)


def _agreeing(left_sig: np.ndarray, right_sig: np.ndarray, pairs: np.ndarray, floor: float) -> np.ndarray:
    """The pairs whose share of equal signature entries (an estimate of J) is >= floor.

    Only the low byte of each hash is compared: 4x less memory traffic, and the 1/256 chance
    of a false match only raises the estimate by < 0.004, which keeps more pairs, never fewer.
    """
    left8, right8 = left_sig.astype(np.uint8), right_sig.astype(np.uint8)  # wraps: the low byte
    need = math.ceil(floor * left_sig.shape[1])
    keep = [
        (left8[chunk[:, 0]] == right8[chunk[:, 1]]).sum(axis=1, dtype=np.int32) >= need
        for chunk in np.array_split(pairs, max(1, len(pairs) // 200_000))
    ]
    return pairs[np.concatenate(keep)] if keep else pairs


def _verify(
    left: Sequence[frozenset[str]], right: Sequence[frozenset[str]], pairs: np.ndarray,
    threshold: float,
) -> list[tuple[int, int, float]]:
    """Exact Jaccard of each candidate pair; those reaching the threshold."""
    found = []
    for i, j in zip(pairs[:, 0].tolist(), pairs[:, 1].tolist()):
        x, y = left[i], right[j]
        common = len(x & y)
        score = common / (len(x) + len(y) - common)
        if score >= threshold:
            found.append((i, j, score))
    return found


def similar_pairs(
    left: Sequence[frozenset[str]], right: Sequence[frozenset[str]], threshold: float
) -> list[tuple[int, int, float]]:
    """(i, j, jaccard) for left[i], right[j] with Jaccard >= threshold (empty sets never match).
    A side that is not a list is read once for signatures and again only at candidate pairs."""
    left_idx, left_sig = _signatures(left)
    right_idx, right_sig = _signatures(right)
    if not left_idx or not right_idx:
        return []
    candidates = _candidates(left_sig, right_sig, threshold)
    pairs = [(left_idx[a], right_idx[b], score)
             for a, b, score in _verify(_picked(left, left_idx), _picked(right, right_idx), candidates, threshold)]
    return sorted(pairs)


def _picked(sets: Sequence[frozenset[str]], indices: list[int]) -> Sequence[frozenset[str]]:
    """sets[i] for i in indices: a list, or a view for sets built on demand."""
    return [sets[i] for i in indices] if isinstance(sets, list) else _Picked(sets, indices)


class _Picked(Sequence[frozenset[str]]):
    def __init__(self, sets: Sequence[frozenset[str]], indices: list[int]) -> None:
        self.sets, self.indices = sets, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> frozenset[str]:  # type: ignore[override]
        return self.sets[self.indices[k]]


class _WordSets(Sequence[frozenset[str]]):
    """Word sets of examples read on demand (a streamed corpus), built when used, never all held."""

    def __init__(self, examples: Sequence[Example], text: Callable[[Example], str]) -> None:
        self.examples, self.text = examples, text

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> frozenset[str]:  # type: ignore[override]
        return word_set(self.text(self.examples[i]))

    def __iter__(self) -> Iterator[frozenset[str]]:
        return (word_set(self.text(e)) for e in self.examples)


def _content_sets(examples: Sequence[Example]) -> Sequence[frozenset[str]]:
    if isinstance(examples, list):
        return [word_set(content_text(e)) for e in examples]
    return _WordSets(examples, content_text)


def text_key(text: str) -> bytes:
    """16 bytes standing for a text in exact-duplicate tests (a collision is 2^-64 likely even
    among 2^32 examples): a streamed corpus is compared without holding its texts."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def find_duplicates(examples: Sequence[Example]) -> list[Match]:
    """Exact duplicates within one file: each later copy points at the first one."""
    first: dict[bytes, int] = {}
    matches: list[Match] = []
    for ex in examples:
        key = text_key(ex.key_text())
        if key in first:
            matches.append(Match(ex.line, first[key], "exact", 1.0))
        else:
            first[key] = ex.line
    return matches


def find_leaks(
    train: Sequence[Example], val: Sequence[Example], threshold: float = NEAR_THRESHOLD
) -> list[Match]:
    """Validation examples that repeat a training example: exactly, nearly, or by prompt alone."""
    train_keys: dict[bytes, list[int]] = defaultdict(list)
    for ex in train:
        train_keys[text_key(ex.key_text())].append(ex.line)
    found: dict[tuple[int, int], Match] = {}
    for ex in val:
        for line in train_keys.get(text_key(ex.key_text()), ()):
            found[(ex.line, line)] = Match(ex.line, line, "exact", 1.0)
    content = similar_pairs(_content_sets(train), _content_sets(val), threshold)
    _add(found, content, train, val, "near")
    # Prompts alone only for validation examples not already flagged: one finding per line is
    # enough to act on, and templated data would otherwise pay for the same pairs twice.
    flagged = {line for line, _ in found}
    prompts = [s if e.line not in flagged else frozenset() for e, s in zip(val, _prompt_sets(val))]
    _add(found, similar_pairs(_prompt_sets(train), prompts, threshold), train, val, "prompt")
    return sorted(found.values(), key=lambda m: (m.line, m.other_line))


def _add(
    found: dict[tuple[int, int], Match],
    pairs: list[tuple[int, int, float]],
    train: Sequence[Example],
    val: Sequence[Example],
    kind: MatchKind,
) -> None:
    for i, j, score in pairs:
        key = (val[j].line, train[i].line)
        if key not in found:  # an exact match found first wins
            found[key] = Match(val[j].line, train[i].line, kind, score)


def _prompt_sets(examples: Sequence[Example]) -> list[frozenset[str]]:
    if getattr(examples, "format", None) == "text":  # streamed raw text (TextRecords): no prompts to read
        return [frozenset()] * len(examples)
    sets = [word_set(prompt_only(e)) for e in examples]
    return [s if len(s) >= MIN_PROMPT_WORDS else frozenset() for s in sets]


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_LISTED])
    return shown + (f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")


def duplicate_issues(matches: Sequence[Match], path: str) -> list[Issue]:
    return [
        Issue(path, m.line, "duplicate", f"exact duplicate of line {m.other_line}; duplicates make "
              "the model over-weight an example: remove the copy", "warning")
        for m in matches
    ]


LEAK_TEXT = {
    "exact": ("leak_exact", "identical to"),
    "near": ("leak_near", "near-duplicate of"),
    "prompt": ("leak_near", "has (nearly) the same prompt as"),
}


def leak_issues(matches: Sequence[Match], val_path: str, train_path: str) -> list[Issue]:
    """One warning per (validation line, kind), naming every training line it repeats."""
    grouped: dict[tuple[int, MatchKind], list[Match]] = defaultdict(list)
    for m in matches:
        grouped[(m.line, m.kind)].append(m)
    issues = []
    for (line, kind), group in sorted(grouped.items()):
        verb = LEAK_TEXT[kind][1]
        train_lines = [m.other_line for m in group]
        where = f"{train_path}:{train_lines[0]}"
        also = f" (also lines {_lines(train_lines[1:])})" if len(train_lines) > 1 else ""
        issues.append(_leak_issue(val_path, line, kind, f"{verb} training example {where}{also}",
                                  max(m.similarity for m in group)))
    return issues


def _leak_issue(path: str, line: int, kind: MatchKind, what: str, similarity: float) -> Issue:
    code = LEAK_TEXT[kind][0]
    if kind == "exact":
        detail = ""
    elif kind == "prompt":
        detail = f" (prompt word similarity {similarity:.2f}; the answers differ)"
    elif similarity >= 1.0:
        detail = " (the same words; only case, punctuation or word order differ)"
    else:
        detail = f" (word similarity {similarity:.2f})"
    return Issue(path, line, code, f"{what}{detail}; validation examples seen in training make "
                 "the validation loss look better than it is: remove it from one of the files",
                 "warning")
