"""The one entry point later stages use to read a dataset: valid examples, or a `DataError`."""

from __future__ import annotations

from pathlib import Path

from tunecraft.data.formats import parse_file
from tunecraft.data.schema import Example
from tunecraft.errors import DataError


def load_examples(path: Path | str) -> list[Example]:
    """All examples of `path`; raises `DataError` listing every error (PATH:LINE: code: message).

    Warnings (duplicates, all-weight-0 conversations) do not stop loading: `data check` shows them.
    """
    parsed = parse_file(Path(path))
    errors = [issue for issue in parsed.issues if issue.severity == "error"]
    if errors:
        listing = "\n".join(f"  {issue}" for issue in errors)
        noun = "error" if len(errors) == 1 else "errors"
        raise DataError(
            f"{path}: {len(errors)} {noun} in the data:\n{listing}\n"
            f"Fix them (details: tunecraft data check {path})."
        )
    return parsed.examples
