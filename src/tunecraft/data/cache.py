"""Tokenized-dataset cache: safetensors arrays + JSON, keyed by everything that changes tokens.

Key = data file bytes + tokenizer files + chat template + render mode + system prompt +
max length + the renderer's version. Writes are atomic (temp file + rename), so a crashed
run never leaves a half-written entry that a later run would trust.

This module's layout is a list of examples loaded whole (chat, instruction, and every format
but streamed raw text). Raw-text JSONL is tokenized straight into an entry of its own layout
and read back one window at a time: see data.tokenstore.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from tunecraft import paths
from tunecraft.durable import atomic_write, atomic_write_text
from tunecraft.data.render import TokenizedExample

RENDER_VERSION = "1"  # bump when render.py changes what it produces
DIGEST_BYTES = 1 << 20  # read at a time when hashing a data file


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's vocabulary/merges, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    h.update(str(getattr(tokenizer, "chat_template", "")).encode("utf-8"))
    h.update(json.dumps(
        [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token], default=str
    ).encode("utf-8"))
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(DIGEST_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({**parts, "render_version": RENDER_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def entry_path(key: str) -> Path:
    """Where the entry of `key` lives (a .safetensors file; the list layout adds a .json beside it)."""
    return paths.data_cache_dir() / f"{key}.safetensors"


def load_cached(key: str) -> list[TokenizedExample] | None:
    """The cached examples of `key`, or None when there is no usable entry (it is rebuilt)."""
    path = entry_path(key)
    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        ids, labels, offsets = arrays["ids"], arrays["labels"], arrays["offsets"]
        rows = meta["rows"]
        if len(offsets) != len(rows) + 1:
            return None
        return [
            TokenizedExample(ids[int(offsets[i]) : int(offsets[i + 1])].tolist(),
                             labels[int(offsets[i]) : int(offsets[i + 1])].tolist(), p, line, cut)
            for i, (p, line, cut) in enumerate(rows)
        ]
    except Exception:  # torn, truncated or foreign entry (safetensors raises its own error type)
        return None


def store(key: str, examples: list[TokenizedExample]) -> None:
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat_ids = np.array([t for e in examples for t in e.input_ids], dtype=np.int32)
    flat_labels = np.array([t for e in examples for t in e.labels], dtype=np.int32)
    path = entry_path(key)
    meta = {"rows": [[e.path, e.line, e.truncated] for e in examples]}
    # JSON first: an entry counts only once its .safetensors exists.
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    atomic_write(
        path,
        lambda p: save_file({"ids": flat_ids, "labels": flat_labels, "offsets": offsets}, str(p)),
    )
