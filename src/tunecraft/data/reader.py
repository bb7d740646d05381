"""Read a data file into numbered text lines, reporting encoding and size problems per line.

Files are read as bytes, line by line, and each line is decoded on its own, so one bad byte
costs one line (an `invalid_utf8` issue naming it) instead of the whole file. A UTF-8
byte-order mark and Windows `\\r\\n` line endings are accepted silently: editors on Windows
write both. UTF-16 (with or without a byte-order mark) is one file-level issue, not one per line.

Reads are bounded: a file over `MAX_FILE_BYTES` is refused before it is read, and a line over
`MAX_LINE_BYTES` is reported and skipped without being held in memory.

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
# Validation and training hold the whole dataset in memory (text, then tokens).
MAX_FILE_BYTES = 2 * 2**30
_SNIFF_BYTES = 4096  # how much of the file the encoding guess looks at
_SKIP_CHUNK = 2**20  # the rest of a too-long line is read and dropped in pieces this size
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Line:
    number: int  # 1-based physical line number
    text: str  # without the line ending; invalid bytes replaced by U+FFFD when `valid` is False
    valid: bool = True  # False when the bytes were not usable text (already reported as an issue)


@dataclass
class ReadResult:
    lines: list[Line] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


def _decode_line(raw: bytes, path: str, number: int) -> tuple[Line, Issue | None]:
    try:
        return Line(number, raw.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        issue = Issue(
            path,
            number,
            "invalid_utf8",
            f"byte {exc.start + 1} of the line (0x{raw[exc.start]:02x}) is not valid UTF-8; "
            "save the file as UTF-8 (in Excel: 'CSV UTF-8'; in Python: encoding='utf-8')",
        )
        return Line(number, raw.decode("utf-8", errors="replace"), valid=False), issue


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


def _raw_lines(fh: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """(line bytes without `\\n`, 0) per line; (b"", size) for a line over MAX_LINE_BYTES."""
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            yield b"", len(raw) + _skip_rest(fh)
        else:
            yield raw.removesuffix(b"\n"), 0


def _read(fh: BinaryIO, head: bytes, path: str) -> ReadResult:
    result = ReadResult()
    problem = _encoding_problem(head, path)
    if problem is not None:
        result.issues.append(problem)
        return result
    has_data = False
    try:
        has_data = _read_into(result, _raw_lines(fh), path)
    except (EOFError, OSError, zlib.error) as exc:  # a broken gzip stream; a plain read raises neither
        number = len(result.lines) + 1
        result.issues.append(Issue(path, number, "corrupt_archive", f"the compressed file breaks at this "
                                   f"line ({exc}); the lines before it are read: recompress the file"))
        has_data = has_data or bool(result.lines)
    if not has_data:
        return ReadResult(issues=result.issues or [
            Issue(path, 0, "empty_file", "the file has no data; add one example per line")])
    return result


def _read_into(result: ReadResult, lines: Iterator[tuple[bytes, int]], path: str) -> bool:
    """Append each line (and its issues) to `result`; returns whether any line held data."""
    has_data, total = False, 0
    for number, (raw, too_long) in enumerate(lines, start=1):
        total += len(raw) + too_long
        if total > MAX_FILE_BYTES:  # only a compressed file gets here: a plain one is refused by size
            result.issues.append(Issue(path, number, "file_too_large", f"the file decompresses to over "
                                       f"{MAX_FILE_BYTES // 2**30} GiB (the dataset is held in memory): "
                                       "deduplicate or sample it below the limit"))
            return has_data
        if number == 1:
            raw = raw.removeprefix(BOM)
        if too_long:
            has_data = True
            result.lines.append(Line(number, "", valid=False))
            result.issues.append(Issue(
                path, number, "line_too_long", f"the line is {_mib(too_long)}; the limit is "
                f"{MAX_LINE_BYTES // 2**20} MiB per line (one example): is the whole file on "
                "one line, or not JSONL/CSV? Write one example per line"))
            continue
        has_data = has_data or bool(raw.strip())
        line, issue = _decode_line(raw.removesuffix(b"\r"), path, number)
        result.lines.append(line)
        if issue is not None:
            result.issues.append(issue)
    return has_data


def split_lines(data: bytes, path: str) -> ReadResult:
    """Bytes -> numbered lines (BOM and `\\r` stripped) plus encoding issues."""
    return _read(io.BytesIO(data), data[:_SNIFF_BYTES], path)


def read_lines(path: Path) -> ReadResult:
    """Read `path` as numbered lines; missing, empty or oversized files become issues, not errors."""
    problem = file_problem(path)
    if problem is not None:
        return ReadResult(issues=[problem])
    with open(path, "rb") as raw:
        compressed = raw.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    opener = gzip.open if compressed else open
    with opener(path, "rb") as fh:
        try:
            head = fh.read(_SNIFF_BYTES)
        except (EOFError, OSError, zlib.error) as exc:
            return ReadResult(issues=[Issue(str(path), 0, "corrupt_archive", f"not a readable gzip "
                                            f"file ({exc}): recompress it, or give it uncompressed")])
        fh.seek(0)
        return _read(fh, head, str(path))


def data_suffix(path: Path) -> str:
    """The data format's suffix, under a compression one: `train.csv.gz` -> `.csv`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""
