"""Read a data file into numbered text lines, reporting encoding and size problems per line.

Files are read as bytes, line by line, and each line is decoded on its own, so one bad byte
costs one line (an `invalid_utf8` issue naming it) instead of the whole file. A UTF-8
byte-order mark and Windows `\\r\\n` line endings are accepted silently: editors on Windows
write both. UTF-16 (with or without a byte-order mark) is one file-level issue, not one per line.

Reads are bounded: a file over `MAX_FILE_BYTES` is refused before it is read, and a line over
`MAX_LINE_BYTES` is reported and skipped without being held in memory. `stream_lines` yields the
lines (and issues) one at a time, each with its byte offset, so a large raw-text file is
validated without holding it (see data.textfile); `read_lines` collects the same stream.

Gzip-compressed files (`data.jsonl.gz`, `data.csv.gz`, or any file starting with gzip's magic
bytes) are read through `gzip` as a stream: exports are often compressed, and decompressing by
hand first doubles the disk they take. A corrupt or truncated archive is one issue naming the
line it broke at; the lines before it are kept.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tunecraft.data.schema import Issue

BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# One example per line: 8 MiB is ~2M tokens, far past any model's context. A longer line is
# a whole file on one line, or not JSONL/CSV at all.
MAX_LINE_BYTES = 8 * 2**20
# Validation and training hold a chat or instruction dataset in memory (text, then tokens);
# raw-text JSONL streams (data.textfile), but shares the limit: one rule for every file.
MAX_FILE_BYTES = 2 * 2**30
_SNIFF_BYTES = 4096  # how much of the file the encoding guess looks at
_SKIP_CHUNK = 2**20  # the rest of a too-long line is read and dropped in pieces this size
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Line:
    number: int  # 1-based physical line number
    text: str  # without the line ending; invalid bytes replaced by U+FFFD when `valid` is False
    valid: bool = True  # False when the bytes were not usable text (already reported as an issue)
    offset: int = 0  # byte offset of the line's start in the (decompressed) file, for re-reading it


@dataclass
class ReadResult:
    lines: list[Line] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def _decode_line(raw: bytes, path: str, number: int, offset: int = 0) -> tuple[Line, Issue | None]:
    try:
        return Line(number, raw.decode("utf-8"), offset=offset), None
    except UnicodeDecodeError as exc:
        issue = Issue(
            path,
            number,
            "invalid_utf8",
            f"byte {exc.start + 1} of the line (0x{raw[exc.start]:02x}) is not valid UTF-8; "
            "save the file as UTF-8 (in Excel: 'CSV UTF-8'; in Python: encoding='utf-8')",
        )
        return Line(number, raw.decode("utf-8", errors="replace"), valid=False, offset=offset), issue


def file_problem(path: Path) -> Issue | None:
    """Problems that make the whole file unreadable (reported at line 0)."""
    if not path.exists():
        return Issue(str(path), 0, "file_not_found", "no such file; check the path")
    if not path.is_file():
        return Issue(str(path), 0, "not_a_file", "this is a directory, not a JSONL, CSV or Parquet file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        return Issue(str(path), 0, "file_too_large", f"the file is {size / 2**30:.1f} GiB; the "
                     f"limit is {MAX_FILE_BYTES // 2**30} GiB (the dataset is held in memory): "
                     "deduplicate or sample it below the limit")
    return None


def _encoding_problem(head: bytes, path: str) -> Issue | None:
    """UTF-16 or binary content, guessed from the first bytes (one message for the file)."""
    fix = "save it as UTF-8 (in Excel: 'CSV UTF-8'; in Python: encoding='utf-8')"
    if head.startswith(UTF16_BOMS):
        return Issue(path, 0, "invalid_utf8", f"the file is UTF-16 encoded; {fix}")
    sample = head[: len(head) - len(head) % 2]
    nuls = sample.count(0)
    if len(sample) < 2 or nuls * 4 < len(sample):
        return None  # a stray NUL is reported at its line, where it is
    # ASCII text in UTF-16 puts a zero byte beside every character: odd offsets for
    # little-endian, even offsets for big-endian.
    odd, even = sample[1::2].count(0), sample[0::2].count(0)
    if odd > 0.9 * nuls:
        order = "little-endian"
    elif even > 0.9 * nuls:
        order = "big-endian"
    else:
        return Issue(path, 0, "invalid_utf8", "the file is mostly NUL bytes: it is not UTF-8 "
                     "text (UTF-32, or a binary file such as a spreadsheet?); export it as UTF-8 "
                     "JSONL or CSV")
    return Issue(path, 0, "invalid_utf8", f"the file looks UTF-16 encoded ({order}, without a "
                 f"byte-order mark: every other byte is 0); {fix}")


def _skip_rest(fh: BinaryIO) -> int:
    """Read and drop the rest of the current line; returns how many bytes that was."""
    skipped = 0
    while True:
        chunk = fh.readline(_SKIP_CHUNK)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _raw_lines(fh: BinaryIO) -> Iterator[tuple[bytes, int, int]]:
    """(line bytes without `\\n`, 0, offset) per line; (b"", size, offset) for a line over
    MAX_LINE_BYTES. `offset`: where the line starts, in bytes from the start of the stream."""
    at = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        start, at = at, at + len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            rest = _skip_rest(fh)
            at += rest
            yield b"", len(raw) + rest, start
        else:
            yield raw.removesuffix(b"\n"), 0, start


def _read(fh: BinaryIO, head: bytes, path: str) -> ReadResult:
    """Collect the stream: every line and issue; a file with no data keeps only its issues."""
    result = ReadResult()
    for item in _stream(fh, head, path):
        if isinstance(item, Line):
            result.lines.append(item)
        else:
            result.issues.append(item)
    if any(i.code == "empty_file" and i.line == 0 for i in result.issues):
        others = [i for i in result.issues if i.code != "empty_file"]
        return ReadResult(issues=others or result.issues)
    return result


def _stream(fh: BinaryIO, head: bytes, path: str) -> Iterator[Line | Issue]:
    """Lines and their issues in file order. A file without data ends with an `empty_file` issue
    (line 0), which the collector drops again when other issues explain the file."""
    problem = _encoding_problem(head, path)
    if problem is not None:
        yield problem
        return
    state = _Progress()
    try:
        yield from _lines_of(_raw_lines(fh), path, state)
    except (EOFError, OSError, zlib.error) as exc:  # a broken gzip stream; a plain read raises neither
        yield Issue(path, state.lines + 1, "corrupt_archive", f"the compressed file breaks at this "
                    f"line ({exc}); the lines before it are read: recompress the file")
        state.has_data = state.has_data or state.lines > 0
    if not state.has_data:
        yield Issue(path, 0, "empty_file", "the file has no data; add one example per line")


@dataclass
class _Progress:
    lines: int = 0  # lines yielded so far
    has_data: bool = False  # whether any of them held something other than whitespace


def _lines_of(lines: Iterator[tuple[bytes, int, int]], path: str, state: _Progress) -> Iterator[Line | Issue]:
    """Each raw line as a `Line` (and its issue, if any); `state` counts what was seen."""
    total = 0
    for number, (raw, too_long, offset) in enumerate(lines, start=1):
        total += len(raw) + too_long
        if total > MAX_FILE_BYTES:  # only a compressed file gets here: a plain one is refused by size
            yield Issue(path, number, "file_too_large", f"the file decompresses to over "
                        f"{MAX_FILE_BYTES // 2**30} GiB (the dataset is held in memory): "
                        "deduplicate or sample it below the limit")
            return
        if number == 1:
            raw = raw.removeprefix(BOM)
        state.lines = number
        if too_long:
            state.has_data = True
            yield Line(number, "", valid=False, offset=offset)
            yield Issue(
                path, number, "line_too_long", f"the line is {_mib(too_long)}; the limit is "
                f"{MAX_LINE_BYTES // 2**20} MiB per line (one example): is the whole file on "
                "one line, or not JSONL/CSV? Write one example per line")
            continue
        state.has_data = state.has_data or bool(raw.strip())
        line, issue = _decode_line(raw.removesuffix(b"\r"), path, number, offset)
        yield line
        if issue is not None:
            yield issue


def split_lines(data: bytes, path: str) -> ReadResult:
    """Bytes -> numbered lines (BOM and `\\r` stripped) plus encoding issues."""
    return _read(io.BytesIO(data), data[:_SNIFF_BYTES], path)


def read_lines(path: Path) -> ReadResult:
    """Read `path` as numbered lines; missing, empty or oversized files become issues, not errors."""
    problem = file_problem(path)
    if problem is not None:
        return ReadResult(issues=[problem])
    with open_data(path) as fh:
        try:
            head = fh.read(_SNIFF_BYTES)
        except (EOFError, OSError, zlib.error) as exc:
            return ReadResult(issues=[_unreadable_archive(path, exc)])
        fh.seek(0)
        return _read(fh, head, str(path))


def stream_lines(path: Path) -> Iterator[Line | Issue]:
    """`read_lines` one line at a time, each `Line` carrying its byte offset: memory stays flat
    whatever the file's size. A file without data ends with an `empty_file` issue (line 0) even
    when other issues were yielded (`read_lines` keeps only those)."""
    problem = file_problem(path)
    if problem is not None:
        yield problem
        return
    with open_data(path) as fh:
        try:
            head = fh.read(_SNIFF_BYTES)
        except (EOFError, OSError, zlib.error) as exc:
            yield _unreadable_archive(path, exc)
            return
        fh.seek(0)
        yield from _stream(fh, head, str(path))


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as raw:
        return raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def open_data(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip (by its magic bytes, not its name)."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")  # type: ignore[return-value]


def read_line_at(path: Path, offset: int) -> bytes:
    """The line starting at byte `offset` (a `Line.offset`), without `\\n`, `\\r` or a leading
    BOM. A gzip file seeks by decompressing up to `offset`: cheap forward, slow backward."""
    with open_data(path) as fh:
        fh.seek(offset)
        raw = fh.readline(MAX_LINE_BYTES + 1).removesuffix(b"\n").removesuffix(b"\r")
    return raw.removeprefix(BOM) if offset == 0 else raw


def _unreadable_archive(path: Path, exc: BaseException) -> Issue:
    return Issue(str(path), 0, "corrupt_archive", f"not a readable gzip file ({exc}): recompress it, "
                 "or give it uncompressed")


def data_suffix(path: Path) -> str:
    """The data format's suffix, under a compression one: `train.csv.gz` -> `.csv`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""
