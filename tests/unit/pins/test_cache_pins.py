"""Pins the tokenized-data cache (`tunecraft.data.cache`, used by `prepare.tokenize_file`).

A second tokenization of unchanged inputs is served from the cache and equals the first; a
change of the data bytes, the tokenizer (vocabulary, chat template), the template mode, the
system prompt, the max length or the renderer version is a miss (a new entry). Entries are a
JSON file plus a safetensors file (never pickle); an unreadable entry is a miss, never a crash.

How a hit is told from a miss without patching internals: after the first call the only entry's
arrays are overwritten (through the public `store`) with a same-sized *sentinel*; a call that
returns the sentinel read the cache, one that returns real tokens did not.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny import CHATML, build_tokenizer, write_chat_data

from tunecraft import paths
from tunecraft.data import cache
from tunecraft.data.prepare import read_examples, tokenize_file
from tunecraft.data.render import TemplateMode, TokenizedExample, tokenize_example

N_ROWS = 6


def _entries() -> set[str]:
    return {p.name for p in paths.data_cache_dir().iterdir()}


def _keys() -> set[str]:
    return {p.stem for p in paths.data_cache_dir().glob("*.safetensors")}


def _sentinel(n: int) -> list[TokenizedExample]:
    return [TokenizedExample([7, 7, 7], [-100, 7, 7], "sentinel", 1000 + i, 0) for i in range(n)]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_chat_data(tmp_path / "train.jsonl", N_ROWS)


@pytest.fixture
def tok_factory(tmp_path: Path) -> Callable[..., Any]:
    """Builds tokenizer variants in their own directories and loads them like training does."""
    from tunecraft.models.load import load_tokenizer

    def make(name: str, chat_template: str | None = CHATML, vocab_size: int = 320) -> Any:
        out = tmp_path / f"tok-{name}"
        build_tokenizer(out, chat_template=chat_template, vocab_size=vocab_size)
        return load_tokenizer(out)

    return make


def _tokenize(
    path: Path, tokenizer: Any, mode: TemplateMode = "auto", system: str | None = None,
    max_length: int | None = None,
) -> list[TokenizedExample]:
    return tokenize_file(path, read_examples(path), tokenizer, max_length, mode, system)


def _prime(path: Path, tokenizer: Any) -> tuple[str, list[TokenizedExample]]:
    """Tokenize once, then swap the entry's content for the sentinel; returns (key, real)."""
    real = _tokenize(path, tokenizer)
    (key,) = _keys()
    cache.store(key, _sentinel(len(real)))
    return key, real


# ---- hits ---------------------------------------------------------------------------------------

def test_hit_returns_equal_data(data_file: Path, tiny_tokenizer: Any) -> None:
    first = _tokenize(data_file, tiny_tokenizer, max_length=20)
    (key,) = _keys()
    assert _entries() == {f"{key}.json", f"{key}.safetensors"}
    assert len(key) == 24 and set(key) <= set("0123456789abcdef")
    # What is stored is exactly what was computed, every field included.
    assert cache.load_cached(key) == first
    expected = [tokenize_example(e, tiny_tokenizer, 20) for e in read_examples(data_file)]
    assert first == expected
    assert sum(e.truncated > 0 for e in first) >= 1  # the truncation count survives the trip
    second = _tokenize(data_file, tiny_tokenizer, max_length=20)
    assert second == first
    assert _keys() == {key}


def test_hit_is_served_from_the_cache(data_file: Path, tiny_tokenizer: Any) -> None:
    _prime(data_file, tiny_tokenizer)
    assert _tokenize(data_file, tiny_tokenizer) == _sentinel(N_ROWS)


def test_same_bytes_at_another_path_share_the_entry(
    data_file: Path, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    _prime(data_file, tiny_tokenizer)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data_file.read_bytes())
    assert _tokenize(copy, tiny_tokenizer) == _sentinel(N_ROWS)  # keyed by content, not name


def test_an_entry_with_another_row_count_is_not_used(data_file: Path, tiny_tokenizer: Any) -> None:
    key, real = _prime(data_file, tiny_tokenizer)
    cache.store(key, _sentinel(N_ROWS - 1))
    assert _tokenize(data_file, tiny_tokenizer) == real


# ---- misses -------------------------------------------------------------------------------------

def test_changed_data_bytes_miss(data_file: Path, tiny_tokenizer: Any) -> None:
    key, _ = _prime(data_file, tiny_tokenizer)
    text = data_file.read_text(encoding="utf-8")
    data_file.write_text(text.replace("ticket 0", "ticket 9", 1), encoding="utf-8")
    got = _tokenize(data_file, tiny_tokenizer)
    assert got != _sentinel(N_ROWS)
    assert got == [tokenize_example(e, tiny_tokenizer) for e in read_examples(data_file)]
    assert len(_keys() - {key}) == 1
    # Even a change that leaves every example's text alone (a trailing blank line) is a miss.
    data_file.write_text(text + "\n", encoding="utf-8")
    assert _tokenize(data_file, tiny_tokenizer) != _sentinel(N_ROWS)
    assert len(_keys()) == 3


@pytest.mark.parametrize(
    "variant",
    [
        {"chat_template": CHATML.replace("You are a helpful assistant.", "You are terse.")},
        {"vocab_size": 300},
        {"chat_template": None},
    ],
    ids=["other_chat_template", "other_vocabulary", "no_chat_template"],
)
def test_other_tokenizer_misses(
    data_file: Path, tok_factory: Callable[..., Any], variant: dict[str, Any]
) -> None:
    base = tok_factory("base")
    key, real = _prime(data_file, base)
    other = tok_factory("other", **variant)
    assert cache.tokenizer_fingerprint(other) != cache.tokenizer_fingerprint(base)
    got = _tokenize(data_file, other)
    assert got != _sentinel(N_ROWS) and got != real
    assert got == [tokenize_example(e, other) for e in read_examples(data_file)]
    assert len(_keys() - {key}) == 1
    assert _tokenize(data_file, base) == _sentinel(N_ROWS)  # the first entry is untouched


def test_same_tokenizer_rebuilt_hits(data_file: Path, tok_factory: Callable[..., Any]) -> None:
    first = tok_factory("one")
    again = tok_factory("two")  # same corpus, same settings, another directory
    assert cache.tokenizer_fingerprint(first) == cache.tokenizer_fingerprint(again)
    _prime(data_file, first)
    assert _tokenize(data_file, again) == _sentinel(N_ROWS)


@pytest.mark.parametrize(
    "change",
    [{"mode": "raw"}, {"mode": "chat"}, {"system": "Be brief."}, {"max_length": 12}],
    ids=["mode_raw", "mode_chat", "system_prompt", "max_length"],
)
def test_render_settings_miss(data_file: Path, tiny_tokenizer: Any, change: dict[str, Any]) -> None:
    key, _ = _prime(data_file, tiny_tokenizer)
    got = _tokenize(data_file, tiny_tokenizer, **change)
    assert got != _sentinel(N_ROWS)
    examples = read_examples(data_file)
    expected = [
        tokenize_example(e, tiny_tokenizer, change.get("max_length"), change.get("mode", "auto"),
                         change.get("system"))
        for e in examples
    ]
    assert got == expected
    assert len(_keys() - {key}) == 1


def test_renderer_version_misses(
    data_file: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, real = _prime(data_file, tiny_tokenizer)
    monkeypatch.setattr(cache, "RENDER_VERSION", cache.RENDER_VERSION + "-next")
    assert _tokenize(data_file, tiny_tokenizer) == real
    assert len(_keys() - {key}) == 1


# ---- the key and its parts ----------------------------------------------------------------------

def test_cache_key_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = {"file": "abc", "tokenizer": "def", "mode": "auto", "system": None, "max_length": 512}
    blob = json.dumps({**parts, "render_version": cache.RENDER_VERSION}, sort_keys=True)
    assert cache.cache_key(parts) == hashlib.sha256(blob.encode()).hexdigest()[:24]
    assert cache.cache_key(dict(reversed(list(parts.items())))) == cache.cache_key(parts)
    monkeypatch.setattr(cache, "RENDER_VERSION", "1")
    # sha256(b'{"file": "abc", "render_version": "1"}')[:24], computed once by hand
    assert cache.cache_key({"file": "abc"}) == "5f955fa1e516478d452a407c"
    for name, value in [("file", "abd"), ("system", ""), ("max_length", 513), ("mode", "raw")]:
        assert cache.cache_key({**parts, name: value}) != cache.cache_key(parts), name


def test_file_digest_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"hello\n")
    hello_sha256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert cache.file_digest(path) == hello_sha256
    big = bytes(range(256)) * 9000  # > 1 MiB: read in chunks, same digest
    path.write_bytes(big)
    assert cache.file_digest(path) == hashlib.sha256(big).hexdigest()


def test_fingerprint_sees_special_tokens(tok_factory: Callable[..., Any]) -> None:
    tok = tok_factory("specials")
    before = cache.tokenizer_fingerprint(tok)
    tok.pad_token = "<|endoftext|>"
    assert cache.tokenizer_fingerprint(tok) != before


# ---- on-disk format -----------------------------------------------------------------------------

def test_entry_is_json_plus_safetensors_never_pickle(data_file: Path, tiny_tokenizer: Any) -> None:
    real = _tokenize(data_file, tiny_tokenizer)
    (key,) = _keys()
    root = paths.data_cache_dir()
    meta = json.loads((root / f"{key}.json").read_text(encoding="utf-8"))
    assert meta == {"rows": [[str(data_file), i + 1, 0] for i in range(N_ROWS)]}

    raw = (root / f"{key}.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    total = sum(len(e.input_ids) for e in real)
    assert {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"} == {
        "ids": ("I32", [total]),
        "labels": ("I32", [total]),
        "offsets": ("I64", [N_ROWS + 1]),
    }
    assert len(raw) == 8 + header_len + 4 * total * 2 + 8 * (N_ROWS + 1)  # nothing else inside
    assert _entries() == {f"{key}.json", f"{key}.safetensors"}  # no other (pickle) file


def test_two_entries_are_four_files_and_no_temp_files(data_file: Path, tiny_tokenizer: Any) -> None:
    _tokenize(data_file, tiny_tokenizer)
    _tokenize(data_file, tiny_tokenizer, mode="raw")
    keys = _keys()
    assert len(keys) == 2
    assert _entries() == {f"{k}{ext}" for k in keys for ext in (".json", ".safetensors")}


# ---- damaged entries ----------------------------------------------------------------------------

def _damage(kind: str, root: Path, key: str) -> None:
    tensors, meta = root / f"{key}.safetensors", root / f"{key}.json"
    raw = tensors.read_bytes()
    if kind == "json_missing":
        meta.unlink()
    elif kind == "json_truncated":
        meta.write_text(meta.read_text(encoding="utf-8")[:7], encoding="utf-8")
    elif kind == "json_empty":
        meta.write_text("", encoding="utf-8")
    elif kind == "json_without_rows":
        meta.write_text("{}", encoding="utf-8")
    elif kind == "tensors_truncated":
        tensors.write_bytes(raw[: len(raw) // 2])
    elif kind == "tensors_empty":
        tensors.write_bytes(b"")
    elif kind == "tensors_garbage":
        tensors.write_bytes(b"this is not a safetensors file")
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "json_missing",
        "json_truncated",
        "json_empty",
        "json_without_rows",
        "tensors_truncated",
        "tensors_empty",
        "tensors_garbage",
    ],
)
def test_damaged_entry_is_a_miss_and_is_rebuilt(
    data_file: Path, tiny_tokenizer: Any, kind: str
) -> None:
    real = _tokenize(data_file, tiny_tokenizer)
    (key,) = _keys()
    _damage(kind, paths.data_cache_dir(), key)
    assert cache.load_cached(key) is None
    assert _tokenize(data_file, tiny_tokenizer) == real
    assert cache.load_cached(key) == real  # rewritten whole


def test_half_written_entry_without_tensors_is_a_miss(data_file: Path, tiny_tokenizer: Any) -> None:
    """A crash between the two atomic writes leaves only the JSON: it must not count."""
    real = _tokenize(data_file, tiny_tokenizer)
    (key,) = _keys()
    (paths.data_cache_dir() / f"{key}.safetensors").unlink()
    assert cache.load_cached(key) is None
    assert _tokenize(data_file, tiny_tokenizer) == real
    assert _keys() == {key}
