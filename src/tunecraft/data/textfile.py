"""Raw-text JSONL validated as a stream, its documents read back from disk on demand.

A domain-adaptation corpus is often hundreds of MB of `{"text": ...}` lines. `formats.parse_file`
holds every example in memory; here the same per-line parser (`formats.parse_json_line`) checks
each line as it is read, reporting the same issues at the same PATH:LINE, and only each valid
document's line number and byte offset are kept (16 bytes a document). `TextRecords` is the
examples as a sequence that re-reads a document when asked, so statistics, the split and
tokenization each stream through the file instead of holding it.

Only files whose records are raw text take this path. Anything else (chat, instruction or
prompt/completion rows, CSV, Parquet, a pretty-printed JSON document, a file whose most common
format is not text, a file with no records) makes `scan_text` return None, and the caller parses
it with `formats.parse_file` as before, so those results are unchanged.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from tunecraft.data.dedup import text_key
from tunecraft.data.formats import ParsedFile, mixed_format_issues, parse_file, parse_json_line, parses_alone
from tunecraft.data.reader import Line, data_suffix, open_data, read_line_at, stream_lines
from tunecraft.data.schema import Example, Format, Issue
from tunecraft.data.split import rank
from tunecraft.errors import DataError


class TextRecords(Sequence[Example]):
    """The valid raw-text examples of one JSONL file, each read from disk when it is used.

    Iterating reads the file once, front to back (cheap for gzip too); indexing seeks to one
    line (a gzip file decompresses up to it: fine for a few lookups, not for random access).
    """

    format: Format = "text"  # every item's format, known without reading any

    def __init__(self, path: Path, lines: np.ndarray, offsets: np.ndarray) -> None:
        self.path = Path(path)
        self.lines = lines  # (D,) int64: each document's 1-based line number
        self.offsets = offsets  # (D,) int64: byte offset of that line (in the decompressed stream)

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> Example: ...
    @overload
    def __getitem__(self, index: slice) -> TextRecords: ...
    def __getitem__(self, index: int | slice) -> Example | TextRecords:
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        line, offset = int(self.lines[index]), int(self.offsets[index])
        return self._parse(read_line_at(self.path, offset), line, offset)

    def __iter__(self) -> Iterator[Example]:
        with open_data(self.path) as fh:
            for line, offset in zip(self.lines.tolist(), self.offsets.tolist()):
                fh.seek(offset)
                raw = fh.readline().removesuffix(b"\n").removesuffix(b"\r")
                yield self._parse(raw.removeprefix(b"\xef\xbb\xbf") if offset == 0 else raw, line, offset)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextRecords:
        """The examples at `indices`, in that order (still read on demand)."""
        chosen = np.asarray(indices, dtype=np.int64)
        return TextRecords(self.path, self.lines[chosen], self.offsets[chosen])

    def _parse(self, raw: bytes, line: int, offset: int) -> Example:
        try:
            example = parse_json_line(Line(line, raw.decode("utf-8"), offset=offset), str(self.path)).example
        except UnicodeDecodeError:
            example = None
        if example is None or example.format != "text":
            raise DataError(f"{self.path}:{line}: the file changed while it was being read (this line was a "
                            "valid raw-text example); run again on the finished file")
        return example


def read_file(path: Path) -> ParsedFile:
    """A data file's records and issues: streamed when it is raw-text JSONL (`scan_text`),
    otherwise `formats.parse_file`."""
    return scan_text(path) or parse_file(path)


def scan_text(path: Path) -> ParsedFile | None:
    """Validate a raw-text JSONL file line by line; None when it is not one (see the module doc)."""
    if data_suffix(path) in (".csv", ".parquet"):
        return None
    name = str(path)
    scan = _Scan()
    for item in stream_lines(path):
        if isinstance(item, Issue):
            scan.read_issues.append(item)
        elif item.valid and item.text.strip() and not scan.add(item, name):
            return None
    return scan.result(path)


class _Scan:
    """What the scan keeps: issues, the text documents' lines and offsets, the other formats' lines."""

    def __init__(self) -> None:
        self.read_issues: list[Issue] = []
        self.record_issues: list[Issue] = []
        self.lines, self.offsets = array("q"), array("q")  # of valid text examples
        self.others: list[tuple[int, Format]] = []  # records of another format: (line, format)
        self.counts: Counter[Format] = Counter()
        self.first: dict[Format, int] = {}  # the first line of each format
        self.records = 0

    def add(self, line: Line, name: str) -> bool:
        """Parse one non-blank line; False as soon as the file is clearly not raw text."""
        if self.records == 0 and line.text.lstrip().startswith(("[", "{")) and not parses_alone(line.text):
            return False  # perhaps one pretty-printed JSON document: parse_file says so
        record = parse_json_line(line, name)
        self.records += 1
        self.record_issues += record.issues
        fmt = record.format
        if fmt is None:
            return True
        if not self.counts and fmt != "text":
            return False  # the first record of a known format is not raw text
        self.counts[fmt] += 1
        self.first.setdefault(fmt, record.line)
        if fmt != "text":
            self.others.append((record.line, fmt))
        elif record.example is not None:
            self.lines.append(record.line)
            self.offsets.append(line.offset)
        return True

    def result(self, path: Path) -> ParsedFile | None:
        """The file as `parse_file` would report it, or None when its format is not text."""
        if not self.counts:
            return None
        top = max(self.counts.values())
        fmt = min((f for f, n in self.counts.items() if n == top), key=self.first.__getitem__)
        if fmt != "text":
            return None
        name = str(path)
        issues = self.read_issues + self.record_issues + mixed_format_issues(self.others, fmt, self.first[fmt], name)
        issues.sort(key=lambda i: i.line)  # stable: per-line issues keep their order, as parse_file's
        records = TextRecords(path, np.frombuffer(self.lines, dtype=np.int64).copy(),
                              np.frombuffer(self.offsets, dtype=np.int64).copy())
        return ParsedFile(path, fmt, records, issues)


def split_keys(records: Sequence[Example], seed: int) -> tuple[list[bytes], list[bytes]]:
    """Per example: its split rank (sha256 of "seed|text", as `split.split_indices` ranks it)
    and its content digest (`dedup.text_key`: identical texts stay on one side), in one pass."""
    ranks, groups = [], []
    for example in records:
        key = example.key_text()
        ranks.append(rank(seed, key))
        groups.append(text_key(key))
    return ranks, groups
