"""The one entry point later stages use to read a dataset: valid examples, or a `DataError`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunecraft.data.formats import ParsedFile, parse_file
from tunecraft.data.schema import Example
from tunecraft.data.textfile import read_file
from tunecraft.errors import DataError


def load_examples(path: Path | str) -> list[Example]:
    """All examples of `path`; raises `DataError` listing every error (PATH:LINE: code: message).

    Warnings (duplicates, all-weight-0 conversations) do not stop loading: `data check` shows them.
    """
    return list(_valid(parse_file(Path(path)), path))


def stream_examples(path: Path | str) -> Sequence[Example]:
    """`load_examples` for training: a raw-text JSONL file is validated as a stream and its
    examples are read from disk when used (data.textfile.TextRecords), so a large corpus is not
    held in memory; any other file gives the same list as `load_examples`."""
    return _valid(read_file(Path(path)), path)


def _valid(parsed: ParsedFile, path: Path | str) -> Sequence[Example]:
    errors = [issue for issue in parsed.issues if issue.severity == "error"]
    if errors:
        listing = "\n".join(f"  {issue}" for issue in errors)
        noun = "error" if len(errors) == 1 else "errors"
        raise DataError(
            f"{path}: {len(errors)} {noun} in the data:\n{listing}\n"
            f"Fix them (details: tunecraft data check {path})."
        )
    return parsed.examples
