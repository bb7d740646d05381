"""Hostile data files: every problem is a `PATH:LINE` issue, never a crash or a silent change.

Lone surrogates, NUL characters, duplicate JSON keys and CSV headers, ignored keys such as
legacy `function_call`, UTF-16 without a byte-order mark, and lines or files past the stated size limits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunecraft.data import reader
from tunecraft.data.check import check_data
from tunecraft.data.formats import parse_file
from tunecraft.data.loader import load_examples
from tunecraft.errors import DataError

CHAT_OK = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _found(path: Path) -> list[tuple[int, str, str]]:
    return [(i.line, i.code, i.severity) for i in parse_file(path).issues]


def test_lone_surrogate_is_an_error_at_its_line_and_data_check_does_not_crash(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    bad = {"messages": [{"role": "user", "content": "broken \ud83d emoji"},
                        {"role": "assistant", "content": "ok"}]}
    path = _jsonl(tmp_path / "s.jsonl", [json.dumps(CHAT_OK), json.dumps(bad)])  # "\ud83d" escape
    assert _found(path) == [(2, "invalid_unicode", "error")]
    (issue,) = parse_file(path).issues
    assert "messages[0].content" in issue.message and "\\ud83d" in issue.message
    report = check_data(path, model=str(tiny_model_dir))  # crashed in the tokenizer before
    assert [(i.line, i.code) for i in report.issues if i.severity == "error"] == [(2, "invalid_unicode")]


def test_lone_surrogate_in_a_prompt_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "p.jsonl", ['{"prompt": "q \\udc00", "completion": "a"}'])
    assert _found(path) == [(1, "invalid_unicode", "error")]


def test_duplicate_json_keys_are_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [
        '{"prompt": "first", "completion": "a", "prompt": "second"}',
        '{"messages": [{"role": "user", "content": "q", "content": "q2"}, '
        '{"role": "assistant", "content": "a"}]}',
        '{"prompt": "fine", "completion": "b"}',
    ])
    found = _found(path)
    assert found[:2] == [(1, "duplicate_key", "error"), (2, "duplicate_key", "error")]
    messages = [i.message for i in parse_file(path).issues]
    assert '"prompt"' in messages[0] and '"content"' in messages[1]
    with pytest.raises(DataError, match=r"d\.jsonl:1: duplicate_key"):
        load_examples(path)


def test_duplicate_csv_header_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("prompt,completion,Prompt\nq,a,other\n", encoding="utf-8")
    parsed = parse_file(path)
    assert [(i.line, i.code) for i in parsed.issues] == [(1, "csv_columns")]
    assert "twice" in parsed.issues[0].message and parsed.examples == []


def test_nul_in_csv_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_bytes(b"prompt,completion\nq,a\nbro\x00ken,b\n")
    parsed = parse_file(path)
    assert [(i.line, i.code, i.severity) for i in parsed.issues] == [(3, "nul_character", "error")]
    assert "prompt" in parsed.issues[0].message
    assert [ex.line for ex in parsed.examples] == [2]


def test_nul_escape_in_jsonl_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "n.jsonl", ['{"text": "a\\u0000b"}'])
    assert _found(path) == [(1, "nul_character", "error")]


def test_ignored_message_keys_are_warned_about(tmp_path: Path) -> None:
    row = {"messages": [
        {"role": "user", "content": "weather?", "name": "alice"},
        {"role": "assistant", "content": "calling", "function_call": {"name": "weather"}},
    ], "functions": [{"name": "weather"}], "id": 7}
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(row)])
    parsed = parse_file(path)
    assert [(i.line, i.code, i.severity) for i in parsed.issues] == [
        (1, "ignored_field", "warning")] * 3
    text = " ".join(i.message for i in parsed.issues)
    assert "messages[0]" in text and '"name"' in text
    assert "messages[1]" in text and '"function_call"' in text and '"tool_calls"' in text  # says what to write
    assert '"functions"' in text and '"tools"' in text
    assert '"id"' not in text  # bookkeeping keys next to the data are normal, not noise
    assert len(load_examples(path)) == 1  # a warning: the example still trains


def test_ignored_csv_columns_are_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("prompt,completion,notes\nq,a,n1\nq2,a2,n2\n", encoding="utf-8")
    parsed = parse_file(path)
    assert [(i.line, i.code, i.severity) for i in parsed.issues] == [(1, "ignored_field", "warning")]
    assert '"notes"' in parsed.issues[0].message and len(parsed.examples) == 2


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_one_clear_issue(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "u.jsonl"
    path.write_bytes("".join(json.dumps(CHAT_OK) + "\n" for _ in range(3)).encode(encoding))
    issues = parse_file(path).issues
    assert [(i.line, i.code) for i in issues] == [(0, "invalid_utf8")]
    assert "UTF-16" in issues[0].message and "UTF-8" in issues[0].message


def test_line_over_the_limit_is_an_error_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"text": "first"}\n')
        fh.write('{"text": "' + "x" * (reader.MAX_LINE_BYTES + 10) + '"}\n')
        fh.write('{"text": "third"}\n')
    parsed = parse_file(path)
    assert [(i.line, i.code) for i in parsed.issues] == [(2, "line_too_long")]
    assert "8 MiB" in parsed.issues[0].message
    assert [ex.text for ex in parsed.examples] == ["first", "third"]


def test_file_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:  # sparse: costs no disk and must never be read
        fh.truncate(reader.MAX_FILE_BYTES + 1)
    result = reader.read_lines(path)
    assert [(i.line, i.code) for i in result.issues] == [(0, "file_too_large")]
    assert "GiB" in result.issues[0].message and result.lines == []


def test_csv_field_over_the_limit_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    # One quoted field spread over many short lines: no line is long, the field is.
    body = "\n".join("y" * 1000 for _ in range(reader.MAX_LINE_BYTES // 1000 + 10))
    path.write_text(f'text\n"{body}"\nshort\n', encoding="utf-8")
    issues = parse_file(path).issues
    assert issues and issues[0].code == "invalid_csv" and "MiB" in issues[0].message


def _codes(rows: list[Any], tmp_path: Path) -> list[str]:
    return [code for _, code, _ in _found(_jsonl(tmp_path / "r.jsonl", [json.dumps(r) for r in rows]))]


def test_clean_rows_stay_clean(tmp_path: Path) -> None:
    rows = [CHAT_OK, {"messages": [{"role": "assistant", "content": "x", "weight": 1},
                                   {"role": "user", "content": "é ✓ 日本 😀"},
                                   {"role": "assistant", "content": "y"}]}]
    assert _codes(rows, tmp_path) == []
