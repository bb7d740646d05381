"""Read a data file into numbered text lines, reporting encoding problems per line.

Files are read as bytes and split on `\\n` before decoding, so one bad byte costs one line (an
`invalid_utf8` issue naming it) instead of the whole file. A UTF-8 byte-order mark and Windows
`\\r\\n` line endings are accepted silently: editors on Windows write both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunecraft.data.schema import Issue

BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class Line:
    number: int  # 1-based physical line number
    text: str  # without the line ending; invalid bytes replaced by U+FFFD when `valid` is False
    valid: bool = True  # False when the bytes were not UTF-8 (already reported as an issue)


@dataclass
class ReadResult:
    lines: list[Line] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)


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


def _file_problem(path: Path) -> Issue | None:
    """Problems that make the whole file unreadable (reported at line 0)."""
    if not path.exists():
        return Issue(str(path), 0, "file_not_found", "no such file; check the path")
    if not path.is_file():
        return Issue(str(path), 0, "not_a_file", "this is a directory, not a JSONL or CSV file")
    return None


def split_lines(data: bytes, path: str) -> ReadResult:
    """Bytes -> numbered lines (BOM and `\\r` stripped) plus encoding issues."""
    result = ReadResult()
    if data.startswith(UTF16_BOMS):
        # A UTF-16 file would give an invalid_utf8 issue on every line; one message is clearer.
        result.issues.append(
            Issue(path, 0, "invalid_utf8", "the file is UTF-16 encoded; save it as UTF-8")
        )
        return result
    if data.startswith(BOM):
        data = data[len(BOM) :]
    if not data.strip():
        result.issues.append(
            Issue(path, 0, "empty_file", "the file has no data; add one example per line")
        )
        return result
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the final newline ends the last line; it does not start a new one
    for number, raw in enumerate(raw_lines, start=1):
        line, issue = _decode_line(raw.removesuffix(b"\r"), path, number)
        result.lines.append(line)
        if issue is not None:
            result.issues.append(issue)
    return result


def read_lines(path: Path) -> ReadResult:
    """Read `path` as numbered lines; missing files and empty files become issues, not errors."""
    problem = _file_problem(path)
    if problem is not None:
        return ReadResult(issues=[problem])
    return split_lines(path.read_bytes(), str(path))
