"""The GGUF writer's pieces: RoPE row permutation, tokenizer fields, unsupported models."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tunecraft.export.gguf_writer import GgufExportError, check_supported, permute_for_rope, tokenizer_fields


def _transformers_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # The inverse as transformers' GGUF loader applies it (written independently here).
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def test_rope_permutation_is_inverted_by_the_loader() -> None:
    w = np.arange(8 * 2 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads x head_dim 8
    p = permute_for_rope(w, 2)
    assert not np.array_equal(p, w)
    assert np.array_equal(_transformers_unpermute(p, 2), w)
    # head 0, head_dim 8: rows (0, 4) become neighbours (llama.cpp's interleaved pairs)
    assert np.array_equal(p[:2], w[[0, 4]])


def test_tokenizer_fields_match_vocab(tiny_tokenizer, tiny_model_dir: Path) -> None:
    fields = tokenizer_fields(tiny_tokenizer, len(tiny_tokenizer) + 2)
    assert fields["pre"] == "gpt-2"
    assert fields["tokens"][tiny_tokenizer.eos_token_id] == "<|im_end|>"
    assert fields["types"][tiny_tokenizer.eos_token_id] == 3  # control token
    assert fields["types"][-1] == 5 and fields["tokens"][-1].startswith("[PAD")  # padded rows
    # 320 tokens: 3 specials (CONTROL), 317 normal, then the 2 padded rows (UNUSED)
    assert len(fields["tokens"]) == len(fields["types"]) == 322
    assert Counter(fields["types"]) == {1: 317, 3: 3, 5: 2}
    assert fields["tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # merges: tokenizer.json's pairs, in order, each as "left right"
    spec = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    pairs = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    assert fields["merges"] == [f"{a} {b}" for a, b in pairs]
    assert len(fields["merges"]) == 61 and fields["merges"][:3] == ["Ġ a", "e r", "h e"]


def test_non_llama_models_are_refused() -> None:
    with pytest.raises(GgufExportError, match="architecture 'gemma3_text'"):
        check_supported(SimpleNamespace(model_type="gemma3_text", rope_parameters={"rope_type": "default"}))
    with pytest.raises(GgufExportError, match="RoPE scaling 'llama3'"):
        check_supported(SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "llama3"}))
