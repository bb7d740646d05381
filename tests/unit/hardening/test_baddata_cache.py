"""A corrupt tokenized-cache entry is a cache miss: `prepare` rebuilds it instead of crashing.

End to end through `tunecraft.data.prepare` with a real tokenizer and real cache files: a
truncated safetensors file (what a crash or a full disk leaves), garbage bytes, and a torn
JSON side file each give the same tokens as a clean run, and leave a good entry behind.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny import write_chat_data

from tunecraft import paths
from tunecraft.data import cache
from tunecraft.data.prepare import prepare


def _truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:40])


def _garbage(entry: Path) -> None:
    entry.write_bytes(b"\x00\xff not a safetensors file" * 10)


def _torn_json(entry: Path) -> None:
    side = entry.with_suffix(".json")
    side.write_text(side.read_text(encoding="utf-8")[:15], encoding="utf-8")


def _header_lies(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[0:8] = (10**9).to_bytes(8, "little")  # a header length past the end of the file
    entry.write_bytes(bytes(data))


def _tokens(prepared: Any) -> list[tuple[list[int], list[int]]]:
    return [(e.input_ids, e.labels) for e in prepared.train + prepared.val]


@pytest.mark.parametrize("corrupt", [_truncate, _garbage, _torn_json, _header_lies])
def test_corrupt_cache_entry_is_rebuilt_through_prepare(
    tmp_path: Path, tiny_tokenizer: Any, corrupt: Callable[[Path], None]
) -> None:
    data = write_chat_data(tmp_path / "train.jsonl", 20)

    def run() -> Any:
        return prepare(data, None, tiny_tokenizer, None, "auto", None, 0.2, 0)

    clean = run()
    (entry,) = sorted(paths.data_cache_dir().glob("*.safetensors"))
    corrupt(entry)
    again = run()  # SafetensorError / JSONDecodeError escaped here before the fix
    assert _tokens(again) == _tokens(clean)
    assert again.split == clean.split
    key = entry.name.removesuffix(".safetensors")
    rebuilt = cache.load_cached(key)  # the entry was rewritten, and is good again
    assert rebuilt is not None and len(rebuilt) == 20
