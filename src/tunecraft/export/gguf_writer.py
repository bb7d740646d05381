"""Write a Llama- or Qwen2-architecture Hugging Face model as a GGUF file for llama.cpp and Ollama.

Conventions llama.cpp expects (and transformers' GGUF loader reverses when reading):
- metadata under `llama.*` / `qwen2.*` (shape, RoPE, norm eps) and `tokenizer.ggml.*` (a `gpt2`
  byte-level BPE vocabulary: tokens, token types, merges, the pre-tokenizer's name, special
  ids), plus `tokenizer.chat_template`;
- tensor names `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output` (omitted when the
  embeddings are tied: llama.cpp then reuses `token_embd`); Qwen2's q/k/v biases as `.bias`;
- for `llama` (also Mistral without a sliding window, which llama.cpp runs as `llama`), Q and K
  projection rows permuted from HF's rotate-half layout to llama.cpp's interleaved RoPE layout:
  per head, rows (first half, second half) become pairs (i, i + head_dim/2); `qwen2` keeps
  rotate-half (llama.cpp runs it with NeoX RoPE);
- 1-D tensors (norms) stay F32; 2-D weights are F16, or Q8_0 / Q4_0 (blocks of 32 along each
  row, one fp16 scale per block and 8 or 4 bits per value) when the row length allows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tunecraft.errors import TunecraftError

GgufType = Literal["f32", "f16", "q8_0", "q4_0"]
Q_BLOCK = 32  # values per Q8_0 / Q4_0 block


class GgufExportError(TunecraftError):
    """A model or tokenizer this GGUF writer cannot represent faithfully."""


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta or getattr(config, "rope_theta", 10000.0))


# Hugging Face model_type -> GGUF architecture this writer maps 1:1.
GGUF_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def gguf_arch(config: Any) -> str:
    return GGUF_ARCHS[config.model_type]


def check_supported(config: Any) -> None:
    """Only what maps 1:1 onto GGUF and back: plain Llama (the default model's architecture),
    Mistral without a sliding window, Qwen2 (its q/k/v biases included)."""
    problems = []
    if config.model_type not in GGUF_ARCHS:
        problems.append(f"architecture {config.model_type!r} (supported: {', '.join(GGUF_ARCHS)})")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(params, dict) and params.get("rope_type", params.get("type", "default")) not in ("default", None):
        problems.append(f"RoPE scaling {params.get('rope_type') or params.get('type')!r}")
    if config.model_type != "qwen2" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        problems.append("bias terms in attention/MLP")
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type != "qwen2" or getattr(config, "use_sliding_window", False)):
        problems.append(f"sliding-window attention ({window} positions)")
    if problems:
        raise GgufExportError(
            "GGUF export cannot represent this model: " + "; ".join(problems)
            + ". Export --format merged instead and convert it with llama.cpp's convert_hf_to_gguf.py."
        )


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved order, per head. (rows, cols) -> same."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


# ----------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's split rules (it re-implements each by name)."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's split regex
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # GPT-2's regex after splitting every digit (SmolLM's tokenizer)
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        for name, split in _known_splits().items():  # Qwen2's, Llama 3's split regex
            if pattern == split:
                return name
    raise GgufExportError(
        f"GGUF export: the tokenizer's pre-tokenizer {kinds} has no llama.cpp equivalent this writer "
        "knows (supported: byte-level GPT-2 style, optionally with single-digit splitting; Qwen2's and "
        "Llama 3's split rules)"
    )


def _known_splits() -> dict[str, str]:
    """llama.cpp pre-tokenizer names -> the split regex transformers' GGUF reader applies for them:
    a file names its regex, and the reader must split text exactly as the tokenizer did."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # older transformers: the names its reader knows are the same
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        return {"qwen2": PRETOKENIZE_REGEX}
    return {name: GGUF_PRE_TOKENIZER_SPLITS[name] for name in ("qwen2", "llama-bpe") if name in GGUF_PRE_TOKENIZER_SPLITS}


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Tokens, types, merges and the pre-tokenizer name from the tokenizer's tokenizer.json."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise GgufExportError(f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    n = len(tokenizer)
    if n > vocab_size:
        raise GgufExportError(f"the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i >= n:  # embedding rows without a token (vocab padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
            continue
        tokens.append(tokenizer.convert_ids_to_tokens(i))
        if i in added:
            types.append(3 if added[i].get("special") else 4)  # CONTROL / USER_DEFINED
        else:
            types.append(1)  # NORMAL
    return {"pre": _pre_tokenizer_name(spec), "tokens": tokens, "types": types, "merges": merges}


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos is not None and bool(probe) and probe[0] == bos


# ----------------------------------------------------------------------------- tensors


def _gguf_name(hf_name: str, name_map: Any) -> str:
    base, _, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(base)
    if mapped is None:
        raise GgufExportError(f"GGUF export: no GGUF name for tensor {hf_name}")
    return f"{mapped}.{suffix}"


def _encode(data: np.ndarray, gtype: GgufType) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None for float arrays written as-is)."""
    import gguf

    if data.ndim == 1 or gtype == "f32":
        return data.astype(np.float32), None
    quantized = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    if gtype in quantized and data.shape[-1] % Q_BLOCK == 0:
        q = quantized[gtype]
        return gguf.quants.quantize(data.astype(np.float32), q), q
    return data.astype(np.float16), None  # a row that is not whole blocks stays F16


def _tensors(model: Any, gtype: GgufType) -> list[tuple[str, np.ndarray, Any]]:
    import gguf

    cfg = model.config
    arch = gguf_arch(cfg)
    name_map = gguf.get_tensor_name_map({"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch],
                                        cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    permute = arch == "llama"  # qwen2 runs with NeoX (rotate-half) RoPE in llama.cpp: rows as they are
    out = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when `output` is absent
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if permute and hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_for_rope(data, cfg.num_attention_heads)
        elif permute and hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_for_rope(data, cfg.num_key_value_heads)
        encoded, raw = _encode(data, gtype)
        out.append((_gguf_name(hf_name, name_map), encoded, raw))
    return out


# ----------------------------------------------------------------------------- file


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    gtype: GgufType,
    name: str,
    eos_token_id: int,
) -> None:
    """Write `model` (float weights, Llama or Qwen2) + `tokenizer` (+ chat template) to `path`."""
    import gguf

    cfg = model.config
    check_supported(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gtype]
    tok = tokenizer_fields(tokenizer, cfg.vocab_size)

    writer = gguf.GGUFWriter(str(path), arch=gguf_arch(cfg))
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tok["pre"])
    writer.add_token_list(tok["tokens"])
    writer.add_token_types(tok["types"])
    writer.add_token_merges(tok["merges"])
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(int(tokenizer.bos_token_id))
    # The end-of-turn token is the one generation must stop at; llama.cpp reads it as EOS/EOT.
    writer.add_eos_token_id(int(eos_token_id))
    writer.add_eot_token_id(int(eos_token_id))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(int(tokenizer.unk_token_id))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(int(tokenizer.pad_token_id))
    writer.add_add_bos_token(_adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    for gname, data, raw in _tensors(model, gtype):
        writer.add_tensor(gname, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
