"""Parquet data files: each row is one record, validated like a JSONL line.

Exports from data warehouses and the Hub's datasets come as Parquet. A row is the JSON object a
JSONL line would hold (nested lists and structs, as `messages` are, come back as lists and
dicts); its 1-based row number stands where a line number stands, so every issue still reads
`PATH:ROW: code: message`. Rows are read in batches, so the file is never decoded at once.

Parquet has no "absent": a column one row lacks is null there (a `weight` only some messages
carry, a `tool_calls` only some turns make). Null fields are therefore dropped before validation,
as if the row had not written them. Reading needs pyarrow (`pip install 'tunecraft[parquet]'`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunecraft.data.reader import file_problem
from tunecraft.data.schema import Issue

BATCH_ROWS = 1024


def without_nulls(value: Any) -> Any:
    """`value` with null fields of every object left out (lists keep their length)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def parquet_rows(path: Path, issues: list[Issue]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, row) for each row of `path`; problems reading it land in `issues`."""
    name = str(path)
    problem = file_problem(path)
    if problem is not None:
        issues.append(problem)
        return
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        issues.append(Issue(name, 0, "parquet_unavailable", "reading Parquet needs pyarrow: "
                            "pip install 'tunecraft[parquet]' (or convert the file to JSONL)"))
        return
    row = 0
    try:
        for batch in pq.ParquetFile(name).iter_batches(batch_size=BATCH_ROWS):
            for obj in batch.to_pylist():
                row += 1
                yield row, without_nulls(obj)
    except (pyarrow.ArrowException, OSError) as exc:
        where = f"after row {row}" if row else "before its first row"
        issues.append(Issue(name, row + 1 if row else 0, "corrupt_parquet",
                            f"not a readable Parquet file ({where}: {exc}); re-export it, or give it as JSONL"))
