"""Format detection and record validation: every error kind, with its line and a useful message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunecraft.data.formats import parse_file, parse_record
from tunecraft.data.loader import load_examples
from tunecraft.data.schema import Message
from tunecraft.errors import DataError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path

# Valid asset files: (name, format, number of examples).
VALID = [
    ("chat.jsonl", "chat", 3),
    ("chat_bom_crlf.jsonl", "chat", 4),
    ("prompt_completion.jsonl", "prompt_completion", 3),
    ("instruction.jsonl", "instruction", 3),
    ("text.jsonl", "text", 2),
    ("blank_lines.jsonl", "prompt_completion", 2),
    ("prompt_completion.csv", "prompt_completion", 3),
    ("text.csv", "text", 2),
    ("excel_bom_crlf.csv", "prompt_completion", 2),
]

# One malformed asset per error kind: (name, [(line, code), ...]) - every issue, nothing more.
MALFORMED = [
    ("invalid_json.jsonl", [(2, "invalid_json")]),
    ("not_an_object.jsonl", [(2, "not_an_object")]),
    ("unknown_format.jsonl", [(2, "unknown_format")]),
    ("mixed_formats.jsonl", [(2, "mixed_formats")]),
    ("missing_field.jsonl", [(2, "missing_field")]),
    ("empty_field.jsonl", [(2, "empty_field")]),
    ("bad_role.jsonl", [(2, "bad_role")]),
    ("no_assistant.jsonl", [(2, "no_assistant")]),
    ("non_string_content.jsonl", [(2, "non_string_content")]),
    ("invalid_weight.jsonl", [(2, "invalid_weight")]),
    ("invalid_utf8.jsonl", [(2, "invalid_utf8")]),
    ("empty_file.jsonl", [(0, "empty_file")]),
    ("csv_columns.csv", [(1, "csv_columns")]),
    ("csv_fields.csv", [(3, "csv_fields")]),
    ("invalid_csv.csv", [(3, "invalid_csv")]),
    ("not_jsonl.json", [(1, "not_jsonl")]),
    ("utf16.jsonl", [(0, "invalid_utf8")]),
]


@pytest.mark.parametrize(("name", "fmt", "count"), VALID)
def test_valid_assets_parse_cleanly(name: str, fmt: str, count: int) -> None:
    parsed = parse_file(ASSETS / name)
    assert parsed.issues == []
    assert parsed.format == fmt
    assert len(parsed.examples) == count
    assert all(ex.format == fmt and ex.path == str(ASSETS / name) for ex in parsed.examples)


@pytest.mark.parametrize(("name", "expected"), MALFORMED)
def test_each_error_kind_is_found_at_its_line(name: str, expected: list[tuple[int, str]]) -> None:
    parsed = parse_file(ASSETS / name)
    assert [(i.line, i.code) for i in parsed.issues] == expected
    assert all(i.severity == "error" for i in parsed.issues)
    for issue in parsed.issues:
        where = f"{ASSETS / name}:{issue.line}" if issue.line else str(ASSETS / name)
        assert str(issue) == f"{where}: {issue.code}: {issue.message}"
        assert len(issue.message) > 20  # says what is wrong and what to do


def test_malformed_corpus_covers_every_documented_code() -> None:
    codes = {code for _, expected in MALFORMED for _, code in expected}
    assert codes >= {
        "invalid_json", "not_an_object", "unknown_format", "mixed_formats", "missing_field",
        "empty_field", "bad_role", "no_assistant", "non_string_content", "invalid_weight",
        "invalid_utf8", "empty_file", "csv_columns",
    }


def test_valid_lines_of_a_broken_file_still_parse() -> None:
    parsed = parse_file(ASSETS / "invalid_json.jsonl")
    assert [ex.line for ex in parsed.examples] == [1, 3]


def test_crlf_bom_chat_keeps_unicode_and_exact_content() -> None:
    ex = parse_file(ASSETS / "chat_bom_crlf.jsonl").examples[-1]
    assert ex.messages == (Message("user", "Ça va ? 日本語"), Message("assistant", "Très bien, merci ! ✓"))
    assert ex.line == 4


def test_chat_weights_and_system_messages() -> None:
    examples = parse_file(ASSETS / "chat.jsonl").examples
    assert examples[0].messages[0] == Message("system", "You are a support agent for Acme Bank.")
    assert [m.weight for m in examples[1].messages] == [1, 0, 1, 1]


def test_csv_rows_cite_their_first_physical_line_and_keep_quoted_newlines() -> None:
    examples = parse_file(ASSETS / "prompt_completion.csv").examples
    assert [ex.line for ex in examples] == [2, 3, 4]
    assert examples[0].prompt == "Classify: my card, it never arrived"
    assert examples[2].prompt == 'Write "hi" twice' and examples[2].completion == "hi\nhi"
    assert parse_file(ASSETS / "excel_bom_crlf.csv").examples[0].completion == "Oui ✓"


def test_instruction_input_is_optional() -> None:
    examples = parse_file(ASSETS / "instruction.jsonl").examples
    assert [ex.input for ex in examples] == ["Good morning", "", ""]


def codes(obj: Any) -> list[str]:
    return [i.code for i in parse_record(obj, "f.jsonl", 7).issues]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"messages": "hi"}, ["not_an_object"]),
        ({"messages": []}, ["empty_field"]),
        ({"messages": ["hi", {"role": "assistant", "content": "a"}]}, ["not_an_object"]),
        ({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}, ["missing_field"]),
        ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, ["missing_field"]),
        ({"messages": [{"role": "tool", "content": "q"}, {"role": "assistant", "content": "a"}]}, ["invalid_tool_call"]),
        ({"messages": [{"role": "function", "content": "q"}, {"role": "assistant", "content": "a"}]}, ["bad_role"]),
        ({"messages": [{"role": "user", "content": ["part"]}, {"role": "assistant", "content": "a"}]},
         ["non_string_content"]),
        ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
         ["non_string_content"]),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                       {"role": "assistant", "content": "a"}]}, ["non_string_content"]),
        ({"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "a"}]}, ["empty_field"]),
        ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}, ["empty_field"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}]},
         ["invalid_weight"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
         ["invalid_weight"]),
        ({"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]},
         ["invalid_weight"]),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
         ["no_loss"]),
        ({"messages": [{"role": "user", "content": 1}, {"role": "user", "content": ""}]},
         ["non_string_content", "empty_field", "no_assistant"]),
        ({"prompt": 3, "completion": "a"}, ["non_string_content"]),
        ({"prompt": "q"}, ["missing_field"]),
        ({"completion": "a"}, ["missing_field"]),
        ({"prompt": "", "completion": ""}, ["empty_field", "empty_field"]),
        ({"instruction": "do", "input": None, "output": "done"}, []),
        ({"instruction": "do", "input": 5, "output": "done"}, ["non_string_content"]),
        ({"instruction": "do"}, ["missing_field"]),
        ({"input": "x", "output": "y"}, ["missing_field"]),
        ({"text": ""}, ["empty_field"]),
        ({"text": {"a": 1}}, ["non_string_content"]),
        ({}, ["unknown_format"]),
        ({"conversations": []}, ["unknown_format"]),
        ("just a string", ["not_an_object"]),
        (None, ["not_an_object"]),
    ],
)
def test_record_issues(obj: Any, expected: list[str]) -> None:
    assert codes(obj) == expected


def test_every_problem_of_a_record_is_reported_with_its_message() -> None:
    record = parse_record(
        {"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": 5, "weight": 0.5}]},
        "f.jsonl", 3,
    )
    assert record.example is None
    messages = [str(i) for i in record.issues]
    assert messages == [
        'f.jsonl:3: bad_role: messages[0].role is "human"; use "user"',
        'f.jsonl:3: bad_role: messages[1].role is "gpt"; use "assistant"',
        "f.jsonl:3: non_string_content: messages[1].content must be a string, got a number",
        "f.jsonl:3: invalid_weight: messages[1].weight is 0.5; use 0 (exclude the message from "
        "the loss) or 1 (train on it)",
        "f.jsonl:3: no_assistant: the conversation has no assistant message; add the reply the "
        "model should learn",
    ]


def test_format_priority_and_extra_keys() -> None:
    # A rendered "text" copy next to structured fields does not make the row ambiguous.
    record = parse_record({"prompt": "q", "completion": "a", "text": "q a", "id": 7}, "f", 1)
    assert record.format == "prompt_completion" and record.issues == []
    chat = parse_record({"messages": [{"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a", "name": "x"}], "text": "x"}, "f", 1)
    # Top-level extras stay silent; a message key training drops ("name") is a warning.
    assert chat.format == "chat" and chat.example is not None
    assert [(i.code, i.severity) for i in chat.issues] == [("ignored_field", "warning")]


def test_mixed_formats_blames_the_minority(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"prompt": "q1", "completion": "a"}, {"prompt": "q2", "completion": "b"}]
    parsed = parse_file(write_jsonl(tmp_path / "m.jsonl", rows))
    assert parsed.format == "prompt_completion"
    assert [(i.line, i.code) for i in parsed.issues] == [(1, "mixed_formats")]
    assert "line 2" in parsed.issues[0].message
    assert [ex.line for ex in parsed.examples] == [2, 3]


def test_pretty_printed_object_is_one_issue(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{\n  "prompt": "q",\n  "completion": "a"\n}\n', encoding="utf-8")
    assert [(i.line, i.code) for i in parse_file(path).issues] == [(1, "not_jsonl")]


def test_csv_header_only_and_empty_fields(tmp_path: Path) -> None:
    only = tmp_path / "h.csv"
    only.write_text("prompt,completion\n", encoding="utf-8")
    assert [i.code for i in parse_file(only).issues] == ["empty_file"]
    empty = tmp_path / "e.csv"
    empty.write_text("text\nhello\n\"\"\n", encoding="utf-8")
    assert [(i.line, i.code) for i in parse_file(empty).issues] == [(3, "empty_field")]


def test_csv_invalid_utf8_row_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(b"prompt,completion\nq,a\ncaf\xe9,b\nq2,a2\n")
    parsed = parse_file(path)
    assert [(i.line, i.code) for i in parsed.issues] == [(3, "invalid_utf8")]
    assert [ex.line for ex in parsed.examples] == [2, 4]


def test_csv_long_field_is_read(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("text\n" + "word " * 60_000 + "\n", encoding="utf-8")  # > csv's 128 KiB default
    assert parse_file(path).issues == []


def test_load_examples_returns_examples_or_lists_every_error(tmp_path: Path) -> None:
    assert len(load_examples(ASSETS / "chat.jsonl")) == 3
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q"}\nnot json\n{"text": "t"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert f"{path}:1: missing_field:" in message
    assert f"{path}:2: invalid_json:" in message
    assert "3 errors" in message and "tunecraft data check" in message


def test_openai_text_parts_train_as_one_string(tmp_path) -> None:
    """OpenAI's content-part lists (text parts) are joined by newlines, exactly like a string."""
    import json

    from tunecraft.data.formats import parse_file

    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "answer"}]}]}
    plain = {"messages": [{"role": "user", "content": "first\nsecond"}, {"role": "assistant", "content": "answer"}]}
    (tmp_path / "parts.jsonl").write_text(json.dumps(parts) + "\n", encoding="utf-8")
    (tmp_path / "plain.jsonl").write_text(json.dumps(plain) + "\n", encoding="utf-8")
    a, b = parse_file(tmp_path / "parts.jsonl"), parse_file(tmp_path / "plain.jsonl")
    assert a.issues == [] and a.examples[0].messages == b.examples[0].messages
    bad = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "input_audio"}]},
                        {"role": "assistant", "content": "a"}]}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n", encoding="utf-8")
    (issue,) = parse_file(tmp_path / "bad.jsonl").issues
    assert (issue.line, issue.code) == (1, "non_string_content")
    assert 'content[1] is a "input_audio" part' in issue.message and "only text parts" in issue.message
