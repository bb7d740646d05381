"""Parquet data files: rows validated like JSONL lines, issues at `PATH:ROW`, nulls read as absent,
a broken file one clear issue, and `tunecraft data check` on a .parquet file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tunecraft.data.formats import parse_file
from tunecraft.data.parquet import without_nulls

ROWS = [
    {"messages": [{"role": "user", "content": "where is my card?"}, {"role": "assistant", "content": "card_arrival"}]},
    {"messages": [{"role": "user", "content": "refund please"}, {"role": "assistant", "content": "refund", "weight": 1}]},
    {"messages": [{"role": "user", "content": "pin?"}, {"role": "robot", "content": "pin_reset"}]},
]


def _write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), str(path))  # one schema: "weight" is null where a row lacks it
    return path


def test_rows_validate_like_lines_with_row_numbers(tmp_path: Path) -> None:
    parsed = parse_file(_write(tmp_path / "chats.parquet", ROWS))
    assert parsed.format == "chat"
    assert [e.line for e in parsed.examples] == [1, 2]
    assert [e.messages[1].content for e in parsed.examples] == ["card_arrival", "refund"]
    errors = [i for i in parsed.issues if i.severity == "error"]
    assert {(i.line, i.code) for i in errors} == {(3, "bad_role"), (3, "no_assistant")}
    assert str(errors[0]).startswith(f"{tmp_path / 'chats.parquet'}:3: bad_role")


def test_nulls_are_absent_fields() -> None:
    row = {"messages": [{"role": "user", "content": "x", "weight": None, "tool_calls": None}], "tools": None}
    assert without_nulls(row) == {"messages": [{"role": "user", "content": "x"}]}


def test_a_broken_file_is_one_issue(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    parsed = parse_file(bad)
    assert parsed.examples == [] and [i.code for i in parsed.issues] == ["corrupt_parquet"]
    assert "re-export it" in parsed.issues[0].message


def test_data_check_reads_parquet(tmp_path: Path, tiny_model_dir: Path) -> None:
    good = _write(tmp_path / "good.parquet", ROWS[:2] * 3)
    # A tiny model's tokenizer: the default model would be converted into this test's fresh
    # cache first (~25 s), which is not what this test is about.
    proc = subprocess.run([sys.executable, "-m", "tunecraft", "data", "check", str(good),
                           "--model", str(tiny_model_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6" in proc.stdout  # the rows counted as examples
