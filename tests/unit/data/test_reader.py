"""Reading data files: BOM, CRLF, per-line invalid UTF-8, empty and missing files."""

from __future__ import annotations

from pathlib import Path

from tunecraft.data.reader import read_lines, split_lines


def test_bom_and_crlf_are_stripped() -> None:
    result = split_lines(b'\xef\xbb\xbf{"a": 1}\r\n{"b": 2}\r\n', "f.jsonl")
    assert [(line.number, line.text) for line in result.lines] == [(1, '{"a": 1}'), (2, '{"b": 2}')]
    assert result.issues == []


def test_last_line_without_newline_and_blank_lines_keep_their_numbers() -> None:
    result = split_lines(b"a\n\n  \nb", "f")
    assert [(line.number, line.text) for line in result.lines] == [(1, "a"), (2, ""), (3, "  "), (4, "b")]


def test_invalid_utf8_is_reported_per_line_and_the_rest_is_read() -> None:
    result = split_lines(b"ok\ncaf\xe9\nstill ok\n\xff\xfe\n", "f.jsonl")
    assert [i.line for i in result.issues] == [2, 4]
    assert all(i.code == "invalid_utf8" and i.severity == "error" for i in result.issues)
    assert "byte 4" in result.issues[0].message and "0xe9" in result.issues[0].message
    assert [line.valid for line in result.lines] == [True, False, True, False]
    assert result.lines[2].text == "still ok"


def test_utf16_file_is_one_issue_not_one_per_line() -> None:
    result = split_lines('{"text": "a"}\n{"text": "b"}\n'.encode("utf-16"), "f.jsonl")
    assert [(i.line, i.code) for i in result.issues] == [(0, "invalid_utf8")]
    assert "UTF-16" in result.issues[0].message


def test_empty_and_whitespace_only_files() -> None:
    for data in (b"", b"\n\n", b"\xef\xbb\xbf", b" \r\n\t\n"):
        result = split_lines(data, "f.jsonl")
        assert [(i.line, i.code) for i in result.issues] == [(0, "empty_file")], data
        assert result.lines == []


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = read_lines(tmp_path / "nope.jsonl")
    assert [i.code for i in missing.issues] == ["file_not_found"]
    directory = read_lines(tmp_path)
    assert [i.code for i in directory.issues] == ["not_a_file"]


def test_issue_str_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\x80\n")
    (issue,) = read_lines(path).issues
    assert str(issue).startswith(f"{path}:1: invalid_utf8: ")


def test_gzipped_jsonl_and_csv_read_like_plain_files(tmp_path: Path) -> None:
    import gzip

    from tunecraft.data.formats import parse_file

    rows = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(rows))
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b"prompt,completion\r\na,b\r\nc,d\r\n"))
    for name in ("d.jsonl.gz", "d.csv.gz"):
        parsed = parse_file(tmp_path / name)
        assert parsed.issues == [] and len(parsed.examples) == 2, name
    plain = parse_file(_write(tmp_path / "d.jsonl", rows))
    unzipped = parse_file(tmp_path / "d.jsonl.gz").examples
    assert [(e.line, e.prompt, e.completion) for e in unzipped] == [(e.line, e.prompt, e.completion) for e in plain.examples]


def test_truncated_gzip_keeps_the_lines_before_the_break(tmp_path: Path) -> None:
    import gzip

    body = b"".join(b'{"text": "line %d ' % i + b"x" * 200 + b'"}\n' for i in range(2000))
    blob = gzip.compress(body)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    result = read_lines(path)
    assert [i.code for i in result.issues] == ["corrupt_archive"]
    assert 0 < len(result.lines) < 2000 and result.issues[0].line == len(result.lines) + 1
    assert all(line.text.startswith('{"text": "line ') for line in result.lines[:-1])
    (tmp_path / "junk.gz").write_bytes(b"\x1f\x8b" + b"not gzip at all")
    assert [i.code for i in read_lines(tmp_path / "junk.gz").issues] == ["corrupt_archive"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
