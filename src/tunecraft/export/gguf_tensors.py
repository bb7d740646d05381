"""A model's weights as GGUF tensors: llama.cpp's names, layouts and storage types.

- Names: `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output` (gguf-py's map for the
  architecture); `output` is omitted when the embeddings are tied (llama.cpp reuses `token_embd`).
- Layouts: for `llama`, Q and K rows go from HF's rotate-half order to llama.cpp's interleaved
  RoPE order (per head, rows i and i + head_dim/2 become neighbours); Gemma's RMSNorm weights are
  stored as 1 + w; `rope_freqs` carries Llama 3's RoPE scaling (see gguf_arch).
- Types: 1-D tensors (norms, biases, rope_freqs) stay F32; 2-D weights are F16, or Q8_0 / Q4_0
  (blocks of 32 along each row, one fp16 scale per block and 8 or 4 bits per value) when the row
  length is whole blocks, else F16.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from tunecraft.export.gguf_arch import GgufExportError, arch_spec, rope_freq_factors

GgufType = Literal["f32", "f16", "q8_0", "q4_0"]
Q_BLOCK = 32  # values per Q8_0 / Q4_0 block
ROPE_FREQS = "rope_freqs.weight"

Tensor = tuple[str, np.ndarray, Any]  # (GGUF name, array to write, raw GGML type or None)


def permute_for_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half row order -> llama.cpp interleaved order, per head. (rows, ...) -> same."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def name_map(config: Any) -> Any:
    """gguf-py's HF -> GGUF tensor-name map for the model's architecture."""
    import gguf

    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_spec(config).gguf)
    return gguf.get_tensor_name_map(arch, config.num_hidden_layers)


def gguf_name(hf_name: str, names: Any) -> str:
    """`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`."""
    base, _, suffix = hf_name.rpartition(".")
    mapped = names.get_name(base)
    if mapped is None:
        raise GgufExportError(f"GGUF export: no GGUF name for tensor {hf_name}")
    return f"{mapped}.{suffix}"


def rope_rows(hf_name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """Q/K projection rows (weights, biases, or a LoRA B) in llama.cpp's RoPE order for the arch."""
    if not arch_spec(config).permute_qk:
        return data  # NeoX-style RoPE in llama.cpp: rotate-half rows as they are
    if ".self_attn.q_proj." in hf_name + ".":
        return permute_for_rope(data, config.num_attention_heads)
    if ".self_attn.k_proj." in hf_name + ".":
        return permute_for_rope(data, config.num_key_value_heads)
    return data


def to_gguf_layout(hf_name: str, data: np.ndarray, config: Any) -> np.ndarray:
    """One HF tensor (float32) as llama.cpp stores it for the architecture."""
    offset = arch_spec(config).norm_offset
    if offset and hf_name.endswith("norm.weight"):
        return data + np.float32(offset)  # Gemma's RMSNorm scales by (1 + w); llama.cpp by the stored value
    return rope_rows(hf_name, data, config)


def encode(data: np.ndarray, gtype: GgufType) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None for float arrays written as-is)."""
    import gguf

    if data.ndim == 1 or gtype == "f32":
        return data.astype(np.float32), None
    quantized = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}
    if gtype in quantized and data.shape[-1] % Q_BLOCK == 0:
        q = quantized[gtype]
        return gguf.quants.quantize(data.astype(np.float32), q), q
    return data.astype(np.float16), None  # a row that is not whole blocks stays F16


def model_tensors(model: Any, gtype: GgufType) -> list[Tensor]:
    """Every tensor of the model file, named, laid out and encoded for llama.cpp."""
    cfg = model.config
    names = name_map(cfg)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    out: list[Tensor] = []
    factors = rope_freq_factors(cfg)
    if factors is not None:  # llama.cpp's form of llama3 RoPE scaling: one divisor per frequency
        out.append((ROPE_FREQS, factors.numpy(), None))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when `output` is absent
        data = to_gguf_layout(hf_name, tensor.detach().to(torch.float32).cpu().numpy(), cfg)
        encoded, raw = encode(data, gtype)
        out.append((gguf_name(hf_name, names), encoded, raw))
    return out
