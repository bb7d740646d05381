"""Raw-text documents tokenized straight into the on-disk cache, read back one window at a time.

A 100 MB corpus is ~40M tokens. Held as Python lists (ids and labels, ~36 bytes a token each)
that is GBs; here each batch of documents is tokenized (the tokenizer's batch API) and written
to the cache entry at once, and training reads one window's slice (`os.pread`, not a memory
map: mapped pages count against the process's resident memory once touched, and an epoch
touches all of them) when it batches that window. Memory stays flat whatever the corpus size:
per document 40 bytes of index, per window 32.

An entry is one safetensors file (never pickle), keyed like the list cache (`cache.cache_key`:
file digest, tokenizer, template mode, system prompt, max length) plus this layout's name:
  ids     I32 (T,)    every document's token ids, concatenated
  labels  I32 (T,)    the loss labels (IGNORE where a token bears no loss), aligned with ids
  offsets I64 (D+1,)  document d is ids[offsets[d]:offsets[d+1]]
  lines   I64 (D,)    its line in the data file
  cut     I64 (D,)    tokens cut by max length (0 when none was given)
  loss    I64 (D,)    its loss-bearing labels (statistics without reading the tokens)
The header's room is reserved first and filled in last, so ids stream straight into the file;
labels stream to an anonymous side file that is appended at the end. `durable.atomic_write`
makes the entry appear whole or not at all.
"""

from __future__ import annotations

import json
import os
from array import array
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, overload

import numpy as np

from tunecraft.data import cache
from tunecraft.data.render import IGNORE, TemplateMode, TokenizedExample, tokenize_texts
from tunecraft.data.schema import Example
from tunecraft.data.textfile import TextRecords
from tunecraft.durable import atomic_write
from tunecraft.errors import DataError

LAYOUT = "flat-v1"  # the entry layout above; part of the cache key
HEADER_BYTES = 1024  # room for the safetensors header: 8-byte length + space-padded JSON
BATCH_CHARS = 128 << 10  # text per tokenizer call: ~30k tokens; larger batches only cost memory
BATCH_DOCS = 256  # documents per tokenizer call at most
SCAN_TOKENS = 1 << 20  # labels read per chunk when counting loss tokens (4 MiB of int32)
COPY_BYTES = 1 << 20  # buffer of the labels' copy into the entry
_I32, _I64 = np.dtype("<i4"), np.dtype("<i8")
_ARRAYS = {"ids": _I32, "labels": _I32, "offsets": _I64, "lines": _I64, "cut": _I64, "loss": _I64}
_DTYPE_NAMES = {_I32: "I32", _I64: "I64"}


@dataclass(frozen=True)
class TokenStore:
    """One entry's document index (in memory) and where its token arrays sit in the file."""

    path: Path  # the cache entry (.safetensors)
    source: str  # the data file, as every TokenizedExample names it
    offsets: np.ndarray  # (D+1,) int64: token offsets of the documents
    lines: np.ndarray  # (D,) int64
    cut: np.ndarray  # (D,) int64
    loss: np.ndarray  # (D,) int64: loss-bearing labels per document
    ids_at: int  # byte offset of ids[0] in the file
    labels_at: int  # byte offset of labels[0]

    def __len__(self) -> int:
        return len(self.lines)

    def lengths(self) -> np.ndarray:
        """(D,) tokens per document."""
        return np.diff(self.offsets)

    def read(self, doc: int, start: int, end: int) -> tuple[list[int], list[int]]:
        """Token ids and labels [start, end) of document `doc`."""
        first, count = int(self.offsets[doc]) + start, end - start
        fd = os.open(self.path, os.O_RDONLY)
        try:
            ids = _pread(fd, self.ids_at + 4 * first, count, self.path)
            labels = _pread(fd, self.labels_at + 4 * first, count, self.path)
        finally:
            os.close(fd)
        return ids.tolist(), labels.tolist()

    def bearing_before(self, positions: np.ndarray) -> np.ndarray:
        """For each flat token position p: how many labels in [0, p) bear loss. One pass over the
        labels, SCAN_TOKENS at a time (never the whole array at once)."""
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        counts = np.empty(len(positions), dtype=np.int64)
        total, base = int(self.offsets[-1]), 0
        with open(self.path, "rb") as fh:
            fh.seek(self.labels_at)
            for c0 in range(0, total, SCAN_TOKENS):
                chunk = np.fromfile(fh, dtype=_I32, count=min(SCAN_TOKENS, total - c0))
                if len(chunk) != min(SCAN_TOKENS, total - c0):
                    raise DataError(f"{self.path}: the cache entry is truncated; delete it and run again")
                running = np.concatenate(([0], np.cumsum(chunk != IGNORE, dtype=np.int64))) + base
                lo, hi = np.searchsorted(ordered, [c0, c0 + len(chunk)], "left")
                counts[order[lo:hi]] = running[ordered[lo:hi] - c0]
                base = int(running[-1])
        counts[order[np.searchsorted(ordered, total, "left"):]] = base  # positions at the very end
        return counts


def _pread(fd: int, offset: int, count: int, path: Path) -> np.ndarray:
    """`count` int32 values at byte `offset` (a short read means the entry was cut off)."""
    raw = os.pread(fd, 4 * count, offset)
    if len(raw) != 4 * count:
        raise DataError(f"{path}: the cache entry is truncated; delete it and run again")
    return np.frombuffer(raw, dtype=_I32)


class TokenView(Sequence[TokenizedExample]):
    """Token sequences of a `TokenStore`, each read from disk when indexed: whole documents, or
    after `windowed` the overlapping windows `prepare.windows` makes of them (same ids, same
    labels, same order). What training, statistics and the plan take for raw text.

    Each item is a span [start, end) of one document; `masked` leading labels of a window after
    a document's first repeat the previous window's context and bear no loss.
    """

    def __init__(self, store: TokenStore, docs: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 masked: np.ndarray) -> None:
        self.store = store
        self.docs, self.starts, self.ends, self.masked = docs, starts, ends, masked  # (N,) int64 each

    @classmethod
    def documents(cls, store: TokenStore, docs: np.ndarray | None = None) -> TokenView:
        """Whole documents (all of them, or those at `docs`, in that order)."""
        chosen = np.arange(len(store), dtype=np.int64) if docs is None else np.asarray(docs, dtype=np.int64)
        zeros = np.zeros(len(chosen), dtype=np.int64)
        return cls(store, chosen, zeros, store.lengths()[chosen], zeros)

    def __len__(self) -> int:
        return len(self.docs)

    @overload
    def __getitem__(self, index: int) -> TokenizedExample: ...
    @overload
    def __getitem__(self, index: slice) -> TokenView: ...
    def __getitem__(self, index: int | slice) -> TokenizedExample | TokenView:
        if isinstance(index, slice):
            return self.subset(np.arange(len(self))[index])
        doc, start, end = int(self.docs[index]), int(self.starts[index]), int(self.ends[index])
        ids, labels = self.store.read(doc, start, end)
        masked = int(self.masked[index])
        if masked:
            labels[:masked] = [IGNORE] * min(masked, len(labels))
        whole = start == 0 and end == int(self.store.offsets[doc + 1] - self.store.offsets[doc])
        return TokenizedExample(ids, labels, self.store.source, int(self.store.lines[doc]),
                                int(self.store.cut[doc]) if whole else 0)

    def __iter__(self) -> Iterator[TokenizedExample]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenView:
        """The items at `indices`, in that order."""
        chosen = np.asarray(indices, dtype=np.int64)
        return TokenView(self.store, self.docs[chosen], self.starts[chosen], self.ends[chosen], self.masked[chosen])

    def windowed(self, max_length: int, overlap: int) -> TokenView:
        """Each document as `prepare.windows` splits it: spans of `max_length` tokens, each after
        the first starting `overlap` tokens before the previous one ended (those bear no loss)."""
        lengths = self.lengths()
        assert not self.starts.any() and np.array_equal(lengths, self.store.lengths()[self.docs]), \
            "windowed() splits whole documents"
        step = max_length - overlap
        counts = np.where(lengths <= max_length, 1, 1 + -(-(lengths - max_length) // step))  # prepare.window_count
        docs = np.repeat(self.docs, counts)
        k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = k * step
        ends = np.minimum(np.repeat(lengths, counts), starts + max_length)
        return TokenView(self.store, docs, starts, ends, np.where(starts > 0, overlap, 0).astype(np.int64))

    def lengths(self) -> np.ndarray:
        """(N,) tokens per item."""
        return self.ends - self.starts

    def token_total(self) -> int:
        return int(self.lengths().sum())

    def loss_token_total(self) -> int:
        """Sum of `batching.count_loss_tokens` over the items (targets after position 0 that bear
        loss), counted from the labels on disk without building any item."""
        flat = self.store.offsets[self.docs]
        lo = flat + self.starts + np.maximum(1, self.masked)  # a window's masked context bears none
        hi = np.maximum(lo, flat + self.ends)
        counts = self.store.bearing_before(np.concatenate([lo, hi]))
        return int((counts[len(lo):] - counts[: len(lo)]).sum())


def tokenized_documents(records: TextRecords, tokenizer: Any, max_length: int | None, mode: TemplateMode,
                        system_prompt: str | None, digest: str | None = None) -> TokenView:
    """Every document of `records` tokenized (truncated to `max_length` when given), from the
    cache when this file, tokenizer and settings were seen before, else tokenized into it now.

    `digest`: the file's SHA-256 when the caller already has it.
    """
    key = cache.cache_key({
        "file": digest or cache.file_digest(records.path),
        "tokenizer": cache.tokenizer_fingerprint(tokenizer),
        "mode": mode,
        "system": system_prompt,
        "max_length": max_length,
        "layout": LAYOUT,
    })
    path = cache.entry_path(key)
    store = open_store(path, records)
    if store is None:
        atomic_write(path, lambda tmp: write_entry(tmp, records, tokenizer, max_length))
        store = open_store(path, records)
        assert store is not None, f"{path}: the entry just written does not read back"
    return TokenView.documents(store)


# ----------------------------------------------------------------------------- writing


def write_entry(path: Path, examples: Sequence[Example], tokenizer: Any, max_length: int | None) -> None:
    """Tokenize `examples` batch by batch into a new entry at `path` (a temp file: see
    `tokenized_documents`)."""
    index = {"offsets": array("q", [0]), "lines": array("q"), "cut": array("q"), "loss": array("q")}  # 8 bytes each
    with open(path, "wb") as out, tempfile.TemporaryFile(dir=Path(path).parent) as side:
        out.write(b"\0" * HEADER_BYTES)
        for batch in _batches(examples):
            for example, (ids, labels) in zip(batch, tokenize_texts(tokenizer, batch), strict=True):
                cut = max(0, len(ids) - max_length) if max_length is not None else 0
                kept_ids = np.asarray(ids[: len(ids) - cut], dtype=_I32)
                kept_labels = np.asarray(labels[: len(labels) - cut], dtype=_I32)
                out.write(memoryview(kept_ids))
                side.write(memoryview(kept_labels))
                index["offsets"].append(index["offsets"][-1] + len(kept_ids))
                index["lines"].append(example.line)
                index["cut"].append(cut)
                index["loss"].append(int(np.count_nonzero(kept_labels != IGNORE)))
        side.seek(0)
        shutil.copyfileobj(side, out, COPY_BYTES)
        arrays = {name: np.frombuffer(values, dtype=np.int64).astype(_I64) for name, values in index.items()}
        for name in ("offsets", "lines", "cut", "loss"):
            out.write(memoryview(arrays[name]))
        out.seek(0)
        out.write(_header(int(arrays["offsets"][-1]), len(arrays["lines"])))


def _batches(examples: Sequence[Example]) -> Iterator[list[Example]]:
    """Consecutive examples, BATCH_CHARS of text or BATCH_DOCS documents at a time."""
    batch: list[Example] = []
    chars = 0
    for example in examples:
        batch.append(example)
        chars += len(example.text)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _shapes(tokens: int, documents: int) -> dict[str, int]:
    return {"ids": tokens, "labels": tokens, "offsets": documents + 1, "lines": documents, "cut": documents,
            "loss": documents}


def _header(tokens: int, documents: int) -> bytes:
    """The safetensors header for these sizes, padded with spaces to HEADER_BYTES in all."""
    spec: dict[str, Any] = {"__metadata__": {"layout": LAYOUT}}
    at = 0
    for name, count in _shapes(tokens, documents).items():
        dtype = _ARRAYS[name]
        spec[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": [count], "data_offsets": [at, at + dtype.itemsize * count]}
        at += dtype.itemsize * count
    text = json.dumps(spec, separators=(",", ":")).encode("utf-8")
    room = HEADER_BYTES - 8
    assert len(text) <= room, "the header outgrew its reserved room"
    return struct.pack("<Q", room) + text + b" " * (room - len(text))


# ----------------------------------------------------------------------------- reading


def open_store(path: Path, records: TextRecords) -> TokenStore | None:
    """The entry at `path` when it is whole and matches `records` (same documents, same
    lines); None otherwise (it is then rebuilt): a torn, foreign or stale entry never counts."""
    try:
        with open(path, "rb") as fh:
            return _read_index(fh, path, records)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _read_index(fh: BinaryIO, path: Path, records: TextRecords) -> TokenStore | None:
    (room,) = struct.unpack("<Q", fh.read(8))
    if room != HEADER_BYTES - 8:
        return None
    header = json.loads(fh.read(room))
    if header.get("__metadata__", {}).get("layout") != LAYOUT:
        return None
    tokens, documents = header["ids"]["shape"][0], header["lines"]["shape"][0]
    if header != json.loads(_header(tokens, documents)[8:]):
        return None  # not exactly the layout this code writes
    if documents != len(records) or os.fstat(fh.fileno()).st_size != HEADER_BYTES + header["loss"]["data_offsets"][1]:
        return None
    small = {}
    for name in ("offsets", "lines", "cut", "loss"):
        fh.seek(HEADER_BYTES + header[name]["data_offsets"][0])
        small[name] = np.fromfile(fh, dtype=_I64, count=header[name]["shape"][0])
    offsets = small["offsets"]
    if offsets[0] != 0 or offsets[-1] != tokens or np.any(np.diff(offsets) < 0):
        return None
    if not np.array_equal(small["lines"], records.lines):
        return None
    return TokenStore(Path(path), str(records.path), offsets, small["lines"], small["cut"], small["loss"],
                      HEADER_BYTES + header["ids"]["data_offsets"][0], HEADER_BYTES + header["labels"]["data_offsets"][0])
