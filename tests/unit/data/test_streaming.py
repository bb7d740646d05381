"""Raw-text JSONL streams: same issues, documents, windows, loss masks, counts and split as the
in-memory path; tokens cached on disk (a second run tokenizes nothing); memory flat in file size.

The in-memory path is the reference: `formats.parse_file` gives a list of examples, and
`tokenize_file` / `fit_length` / `token_stats` on a list are the code that existed before
streaming. The streamed path is `prepare.read_examples` (a `TextRecords`) through the same calls.
"""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from tunecraft import paths
from tunecraft.data import cache, dedup, tokenstore
from tunecraft.data.batching import count_loss_tokens
from tunecraft.data.dedup import find_duplicates, find_leaks
from tunecraft.data.formats import parse_file
from tunecraft.data.prepare import (fit_length, prepare, read_examples, tokenize_file, total_loss_tokens,
                                    total_tokens, window_count)
from tunecraft.data.render import IGNORE, sequences
from tunecraft.data.stats import token_stats
from tunecraft.data.textfile import TextRecords, scan_text
from tunecraft.data.tokenstore import TokenView

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "the", "of", "and", "a", "model", "token", "window"]
LIMIT, OVERLAP = 64, 8  # window length and overlap the comparisons use (tokens)


def write_corpus(path: Path, n_bytes: int, seed: int = 0, longest_words: int = 600) -> Path:
    """Raw-text JSONL of about `n_bytes`: mostly short documents, some far past LIMIT tokens."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as fh:
        while written < n_bytes:
            n_words = rng.randint(3, 40) if rng.random() < 0.7 else rng.randint(40, longest_words)
            line = json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(n_words))}) + "\n"
            fh.write(line)
            written += len(line)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", 60_000)


def _both(path: Path) -> tuple[TextRecords, list[Any]]:
    streamed = read_examples(path)
    assert isinstance(streamed, TextRecords)
    return streamed, list(parse_file(path).examples)


# ---- the same result as the in-memory path ------------------------------------------------------

def test_documents_windows_masks_and_counts_equal_the_in_memory_path(corpus: Path, tiny_tokenizer: Any) -> None:
    streamed, listed = _both(corpus)
    assert list(streamed) == listed and len(streamed) == len(listed)
    docs = tokenize_file(corpus, streamed, tiny_tokenizer, None, "auto", None)
    reference = tokenize_file(corpus, listed, tiny_tokenizer, None, "auto", None)
    assert isinstance(docs, TokenView) and isinstance(reference, list)
    assert list(docs) == reference  # ids, labels, path, line, truncated of every document
    windows = fit_length(docs, streamed, LIMIT, OVERLAP)
    expected = fit_length(reference, listed, LIMIT, OVERLAP)
    assert len(windows) == len(expected) == sum(window_count(len(d.input_ids), LIMIT, OVERLAP) for d in reference)
    assert len(windows) > 2 * len(reference)  # the corpus really is split
    assert list(windows) == expected  # the loss masks too: each repeated context token is IGNORE
    assert [w.labels[:OVERLAP] for w in windows if w.labels[0] == IGNORE] != []
    assert total_tokens(windows) == sum(len(w.input_ids) for w in expected)
    assert total_loss_tokens(windows) == sum(count_loss_tokens(w) for w in expected) > 0
    assert sequences(windows) is windows  # never copied into a list
    picked = windows.subset([5, 1, 5])
    assert [picked[i] for i in range(3)] == [expected[5], expected[1], expected[5]]


def test_truncation_at_tokenization_matches(corpus: Path, tiny_tokenizer: Any) -> None:
    streamed, listed = _both(corpus)
    docs = tokenize_file(corpus, streamed, tiny_tokenizer, 40, "auto", None)
    reference = tokenize_file(corpus, listed, tiny_tokenizer, 40, "auto", None)
    assert list(docs) == reference and any(d.truncated for d in reference)


@pytest.mark.parametrize("overlap", [None, 0, 20])
def test_statistics_equal_the_in_memory_path(corpus: Path, tiny_tokenizer: Any, overlap: int | None) -> None:
    streamed, listed = _both(corpus)
    stats, issues = token_stats(streamed, tiny_tokenizer, LIMIT, overlap=overlap)
    expected, expected_issues = token_stats(listed, tiny_tokenizer, LIMIT, overlap=overlap)
    assert (stats, issues) == (expected, expected_issues)
    assert stats.split_documents > 0 and stats.windows > stats.split_documents


def test_split_and_prepared_sets_equal_the_in_memory_path(corpus: Path, tiny_tokenizer: Any) -> None:
    streamed, listed = _both(corpus)
    with open(corpus, "a", encoding="utf-8") as fh:  # identical documents stay on one side
        fh.write(json.dumps({"text": listed[0].text}) + "\n")
    streamed, listed = _both(corpus)
    got = prepare(corpus, None, tiny_tokenizer, None, "auto", None, 0.2, 7, streamed)
    want = prepare(corpus, None, tiny_tokenizer, None, "auto", None, 0.2, 7, listed)
    assert got.split == want.split and got.split["val_lines"]
    assert list(got.train) == want.train and list(got.val) == want.val
    assert list(got.train_examples) == want.train_examples and list(got.val_examples) == want.val_examples
    assert find_duplicates(streamed) == find_duplicates(listed) != []


def test_leak_check_equals_the_in_memory_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact and near copies of training documents in a validation file, found the same way when
    both files stream (word sets built on demand, signatures in chunks)."""
    rng = random.Random(3)
    docs = [" ".join(f"w{rng.randrange(5000)}" for _ in range(rng.randint(12, 80))) for _ in range(150)]
    near = docs[7].split()
    near[0] = "changed"
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    val_docs = [docs[3], " ".join(near), "an unrelated validation document about nothing in particular"]
    val.write_text("".join(json.dumps({"text": d}) + "\n" for d in val_docs), encoding="utf-8")
    expected = find_leaks(parse_file(train).examples, parse_file(val).examples)
    assert {(m.line, m.other_line, m.kind) for m in expected} == {(1, 4, "exact"), (2, 8, "near")}
    monkeypatch.setattr(dedup, "MINHASH_WORDS", 50)  # many chunks: the same signatures
    assert find_leaks(read_examples(train), read_examples(val)) == expected


# ---- validation: the same issues, streamed ------------------------------------------------------

def test_problem_lines_give_the_same_issues(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [b'\xef\xbb\xbf{"text": "first"}\r', b'{"text": ""}', b"not json", b'{"text": "caf\xe9"}', b"",
             b'{"prompt": "q", "completion": "a"}', b'{"text": "ok", "text": "twice"}', b'{"text": "a\\u0000b"}',
             b'{"text": "last"}']
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    streamed = scan_text(path)
    assert streamed is not None and isinstance(streamed.examples, TextRecords)
    reference = parse_file(path)
    assert streamed.issues == reference.issues and streamed.format == reference.format == "text"
    assert [(i.line, i.code) for i in streamed.issues] == [
        (2, "empty_field"), (3, "invalid_json"), (4, "invalid_utf8"), (6, "mixed_formats"),
        (7, "duplicate_key"), (8, "nul_character")]
    assert list(streamed.examples) == reference.examples
    assert [e.text for e in streamed.examples] == ["first", "last"]
    assert streamed.examples[0].line == 1 and streamed.examples[-1].line == 9  # read back by offset


def test_gzip_text_streams_too(corpus: Path, tmp_path: Path) -> None:
    packed = tmp_path / "corpus.jsonl.gz"
    packed.write_bytes(gzip.compress(corpus.read_bytes()))
    streamed, listed = _both(packed)
    assert list(streamed) == listed and streamed[3] == listed[3]


@pytest.mark.parametrize("name", ["chat", "csv", "pretty", "mostly_chat", "only_errors"])
def test_other_files_keep_the_in_memory_path(tmp_path: Path, name: str) -> None:
    chat = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    content = {
        "chat": chat + "\n" + chat + "\n",
        "csv": "text\nfirst\nsecond\n",
        "pretty": '{\n  "text": "one document"\n}\n',
        "mostly_chat": '{"text": "t"}\n' + (chat + "\n") * 3,
        "only_errors": "not json\nnor this\n",
    }[name]
    path = tmp_path / ("data.csv" if name == "csv" else "data.jsonl")
    path.write_text(content, encoding="utf-8")
    assert scan_text(path) is None
    examples = read_examples(path) if name in ("chat", "csv") else parse_file(path).examples
    assert isinstance(examples, list)


# ---- the on-disk cache --------------------------------------------------------------------------

def _entries() -> list[Path]:
    return sorted(paths.data_cache_dir().iterdir())


def test_second_run_tokenizes_nothing(corpus: Path, tiny_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    first = list(tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None))
    (entry,) = _entries()

    def refuse(*_: Any) -> Any:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokenstore, "tokenize_texts", refuse)
    again = tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None)
    assert list(again) == first and _entries() == [entry]
    stats, _ = token_stats(read_examples(corpus), tiny_tokenizer, LIMIT)  # data check shares the entry
    assert stats.examples == len(first)
    with pytest.raises(AssertionError, match="tokenized again"):  # another max length is another entry
        tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, 32, "auto", None)
    with open(corpus, "a", encoding="utf-8") as fh:  # so are other bytes
        fh.write('{"text": "one more"}\n')
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None)


def test_entry_is_a_plain_safetensors_file(corpus: Path, tiny_tokenizer: Any) -> None:
    docs = tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None)
    (entry,) = _entries()  # one file: no pickle, no temp files left behind
    arrays = load_file(str(entry))
    assert sorted(arrays) == ["cut", "ids", "labels", "lines", "loss", "offsets"]
    assert arrays["ids"].dtype == np.int32 and arrays["offsets"].dtype == np.int64
    assert arrays["ids"][: len(docs[0].input_ids)].tolist() == docs[0].input_ids
    assert int(arrays["offsets"][-1]) == len(arrays["labels"]) == total_tokens(docs)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_lines"])
def test_damaged_entry_is_rebuilt(corpus: Path, tiny_tokenizer: Any, damage: str) -> None:
    first = list(tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None))
    (entry,) = _entries()
    raw = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(raw[: len(raw) - 9])
    elif damage == "garbage":
        entry.write_bytes(b"not a safetensors file")
    else:  # an entry whose documents sit on other lines is not this file's
        lines = read_examples(corpus)
        shifted = TextRecords(lines.path, lines.lines + 1, lines.offsets)
        assert tokenstore.open_store(entry, shifted) is None
        return
    assert tokenstore.open_store(entry, read_examples(corpus)) is None
    assert list(tokenize_file(corpus, read_examples(corpus), tiny_tokenizer, None, "auto", None)) == first


# ---- memory does not grow with the file ---------------------------------------------------------

def _peak_bytes(path: Path, tokenizer: Any, limit: int = 512, overlap: int = 64) -> int:
    """Peak traced allocation of validating, tokenizing (cold cache), splitting, windowing, counting
    and reading every window once (an epoch), as data check and planning do."""
    tracemalloc.start()
    try:
        examples = read_examples(path)
        find_duplicates(examples)
        data = prepare(path, None, tokenizer, None, "auto", None, 0.1, 0, examples)
        token_stats(examples, tokenizer, limit, overlap=overlap)
        windows = fit_length(data.train, data.train_examples, limit, overlap)
        total_loss_tokens(windows)
        assert sum(len(w.input_ids) for w in windows) == total_tokens(windows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_file_size(tmp_path: Path, tiny_tokenizer: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """4x the data, the same peak: only the index grows (16 bytes a document, ~100 a window while
    windows are counted), never the texts or the tokens. Small tokenizer batches let a file under
    1 MB show it, and windows of 512 tokens (as real runs use) keep the index small beside them."""
    monkeypatch.setattr(tokenstore, "BATCH_CHARS", 16 << 10)
    monkeypatch.setattr(tokenstore, "SCAN_TOKENS", 1 << 14)
    monkeypatch.setattr(tokenstore, "COPY_BYTES", 64 << 10)
    monkeypatch.setattr(cache, "DIGEST_BYTES", 64 << 10)  # 1 MiB reads would be the whole file here
    small = write_corpus(tmp_path / "small.jsonl", 150_000, seed=1)
    large = write_corpus(tmp_path / "large.jsonl", 600_000, seed=2)
    peak_small, peak_large = _peak_bytes(small, tiny_tokenizer), _peak_bytes(large, tiny_tokenizer)
    assert peak_large < peak_small * 1.25 + (256 << 10), (peak_small, peak_large)
    tracemalloc.start()  # the measurement can tell: the in-memory path grows with the file
    try:
        listed = parse_file(small).examples
        data = prepare(small, None, tiny_tokenizer, None, "auto", None, 0.1, 0, listed)
        fit_length(data.train, data.train_examples, 512, 64)
        assert tracemalloc.get_traced_memory()[1] > 2 * peak_large
    finally:
        tracemalloc.stop()
