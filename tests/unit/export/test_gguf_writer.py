"""The GGUF writer's pieces: RoPE row permutation, Llama 3's rope_freqs, Gemma's norm offset,
both vocabulary kinds, the refusals, and the LoRA adapter's metadata and pairs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny import FAMILIES, build_family_tokenizer
from tunecraft.export.gguf_arch import rope_freq_factors, unsupported
from tunecraft.export.gguf_tensors import to_gguf_layout
from tunecraft.export.gguf_vocab import BYTE, CONTROL, NORMAL, UNKNOWN, build_vocab
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


def test_sentencepiece_vocabulary_scores_replay_the_merge_order(tmp_path: Path) -> None:
    """A "▁" vocabulary becomes llama.cpp's `llama` model: each merged token scores minus its
    merge rank (llama.cpp merges the highest-scoring pair first), specials are CONTROL, <unk> UNKNOWN."""
    tok = build_family_tokenizer(tmp_path, FAMILIES["mistral"])
    vocab = build_vocab(tok, len(tok))
    assert vocab.model == "llama" and vocab.pre is None and vocab.space_prefix == "first"
    assert vocab.types[:3] == [UNKNOWN, CONTROL, CONTROL] and vocab.tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert BYTE not in vocab.types and vocab.types.count(NORMAL) == len(tok) - 3
    first_rank: dict[str, int] = {}
    for k, merge in enumerate(vocab.merges):
        first_rank.setdefault(merge.replace(" ", ""), k)
    assert all(vocab.scores[vocab.tokens.index(t)] == -(k + 1.0) for t, k in first_rank.items())
    assert all(s == 0.0 for t, s in zip(vocab.tokens, vocab.scores) if t not in first_rank)  # characters, specials
    assert vocab.merges == [" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]


def test_llama3_rope_freqs_are_transformers_own_scaling() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 128}
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rope_scaling=rope)
    factors = rope_freq_factors(cfg)
    assert factors is not None and factors.shape == (8,)  # head_dim 16 -> 8 frequencies
    # llama.cpp divides each angle by its factor: default / factor must be transformers' llama3 inv_freq
    default = 1.0 / (500000.0 ** (torch.arange(0, 16, 2).float() / 16))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    assert torch.allclose(default / factors, scaled, rtol=1e-6)
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(32.0)  # high frequencies kept, low ones / factor
    assert rope_freq_factors(LlamaConfig(hidden_size=64, num_attention_heads=4)) is None


def _gemma3(**overrides) -> object:
    from transformers import Gemma3TextConfig

    shape = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
             "num_hidden_layers": 6, "query_pre_attn_scalar": 16, "sliding_window": 8, "vocab_size": 64}
    return Gemma3TextConfig(**{**shape, **overrides})


def test_gemma3_norms_are_stored_as_one_plus_w_and_rows_keep_their_order() -> None:
    cfg = _gemma3()
    assert unsupported(cfg) == []
    w = np.arange(16, dtype=np.float32)
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_norm.weight", "model.norm.weight"):
        assert np.array_equal(to_gguf_layout(name, w, cfg), w + 1)
    q = np.arange(32 * 4, dtype=np.float32).reshape(32, 4)
    assert np.array_equal(to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, cfg), q)  # NeoX RoPE
    llama = SimpleNamespace(model_type="llama", num_attention_heads=4, num_key_value_heads=2)
    assert np.array_equal(to_gguf_layout("model.layers.0.self_attn.q_proj.weight", q, llama), permute_for_rope(q, 4))
    assert np.array_equal(to_gguf_layout("model.layers.0.self_attn.v_proj.weight", q, llama), q)
    assert np.array_equal(to_gguf_layout("model.layers.0.input_layernorm.weight", w, llama), w)


def test_what_llama_cpp_cannot_run_as_trained_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GgufExportError, match="architecture 'phi3'"):
        check_supported(SimpleNamespace(model_type="phi3"))
    with pytest.raises(GgufExportError, match="RoPE scaling 'yarn'"):
        check_supported(SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}))
    with pytest.raises(GgufExportError, match="sliding-window attention"):
        check_supported(SimpleNamespace(model_type="mistral", sliding_window=4096))
    # Gemma 3: llama.cpp fixes the local/global layout and the attention scale; every reason at once
    odd = _gemma3(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=256)
    problems = unsupported(odd)
    assert len(problems) == 2 and "layer layout" in problems[0] and "query_pre_attn_scalar 256" in problems[1]
    # a "▁" vocabulary with a dummy prefix on Gemma 3: transformers' reader would rebuild it without one
    vocab = build_vocab(build_family_tokenizer(tmp_path, FAMILIES["gemma3"]), 400)
    with pytest.raises(GgufExportError, match="prepends '▁' before the first word only"):
        check_supported(_gemma3(), vocab)


def test_a_dora_adapter_is_refused_for_gguf_lora(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from tunecraft.export.gguf_lora import lora_pairs
    from tunecraft.models.load import load_model

    dora = get_peft_model(load_model(tiny_model_dir), LoraConfig(target_modules=["q_proj"], r=2, use_dora=True))
    with pytest.raises(GgufExportError, match="DoRA"):
        lora_pairs(dora)
    plain = get_peft_model(load_model(tiny_model_dir), LoraConfig(target_modules=["q_proj", "v_proj"], r=2, lora_alpha=6))
    pairs = lora_pairs(plain)
    assert [p.module for p in pairs[:2]] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert pairs[0].rank == 2 and pairs[0].scale == 3.0 and pairs[0].a.shape == (2, 32) and pairs[0].b.shape == (32, 2)
