"""Which Hugging Face architectures map onto which llama.cpp (GGUF) architecture, and how.

llama.cpp re-implements each architecture with some choices fixed in its C++ code rather than
read from the file. A model is exported only when those fixed choices equal the model's, so the
file means in llama.cpp exactly what the run trained:

- `llama` (Llama, and Mistral without a sliding window, which llama.cpp runs as `llama`):
  interleaved RoPE (Q/K rows permuted per head); Llama 3.1+'s `llama3` RoPE scaling is written
  as the `rope_freqs` tensor, one divisor per rotary frequency (llama.cpp computes angle
  pos * base^(-2i/d) / rope_freqs[i]), as llama.cpp's converter does; no biases, SiLU.
- `qwen2`: rotate-half (NeoX) RoPE, so rows stay as they are; q/k/v biases; no sliding window.
- `gemma3` (the text model, `gemma3_text`): norms stored as 1 + w (Gemma scales by 1 + w);
  QK norms; head size from `key_length`; embeddings scaled by sqrt(hidden) in llama.cpp's graph.
  llama.cpp fixes: every 6th layer global and the rest sliding-window (local), local RoPE base
  10000, attention scale 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 62-layer 27B), no
  soft-capping. Linear RoPE scaling of the global layers is written as `rope.scaling.*`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tunecraft.errors import TunecraftError

GEMMA3_PATTERN = 6  # llama.cpp: layer i is global iff i % 6 == 5 (transformers' default layout too)
GEMMA3_LOCAL_THETA = 10000.0
GEMMA3_27B_LAYERS = 62  # llama.cpp scales attention by 1/sqrt(hidden/heads) for this shape only


class GgufExportError(TunecraftError):
    """A model or tokenizer this GGUF writer cannot represent faithfully."""


@dataclass(frozen=True)
class ArchSpec:
    gguf: str  # general.architecture
    permute_qk: bool  # llama.cpp's interleaved RoPE wants Q/K rows permuted per head
    norm_offset: float  # added to every RMSNorm weight (Gemma stores 1 + w)
    reader_space_prefix: str  # how transformers' GGUF reader rebuilds a "▁" vocabulary: "first" | "never"


# Hugging Face model_type -> the GGUF architecture this writer maps 1:1.
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", permute_qk=True, norm_offset=0.0, reader_space_prefix="first"),
    "mistral": ArchSpec("llama", permute_qk=True, norm_offset=0.0, reader_space_prefix="first"),
    "qwen2": ArchSpec("qwen2", permute_qk=False, norm_offset=0.0, reader_space_prefix="first"),
    "gemma3_text": ArchSpec("gemma3", permute_qk=False, norm_offset=1.0, reader_space_prefix="never"),
}


def arch_spec(config: Any) -> ArchSpec:
    return ARCHS[config.model_type]


def head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def rope_params(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The RoPE parameters (of one layer type, for Gemma 3): transformers 5's `rope_parameters`,
    or transformers 4's `rope_scaling` + `rope_theta` (`rope_local_base_freq` for local layers)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if not isinstance(params, dict) or "rope_theta" not in params:
        if layer_type == "sliding_attention":  # transformers 4: local layers are unscaled
            return {"rope_type": "default", "rope_theta": getattr(config, "rope_local_base_freq", GEMMA3_LOCAL_THETA)}
        legacy = dict(getattr(config, "rope_scaling", None) or {})
        legacy.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        params = legacy
    return {**params, "rope_type": params.get("rope_type", params.get("type", "default"))}


# ----------------------------------------------------------------------------- what maps 1:1


def unsupported(config: Any) -> list[str]:
    """Every reason this model's file would not mean in llama.cpp what the run trained (empty: fine)."""
    if config.model_type not in ARCHS:
        return [f"architecture {config.model_type!r} (supported: {', '.join(ARCHS)})"]
    if config.model_type == "gemma3_text":
        return _gemma3_problems(config)
    problems = []
    rope = rope_params(config)
    allowed = ("default", "llama3") if arch_spec(config).gguf == "llama" else ("default",)
    if rope["rope_type"] not in allowed:
        problems.append(f"RoPE scaling {rope['rope_type']!r} (supported here: {', '.join(allowed)})")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append("partial rotary embeddings")
    if config.model_type != "qwen2" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        problems.append("bias terms in attention/MLP")
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type != "qwen2" or getattr(config, "use_sliding_window", False)):
        problems.append(f"sliding-window attention ({window} positions)")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act!r} (llama.cpp runs this architecture with SiLU)")
    return problems


def gemma3_layer_types(n_layers: int) -> list[str]:
    """The local/global layout llama.cpp hard-codes for `gemma3`: every 6th layer global."""
    return ["full_attention" if (i + 1) % GEMMA3_PATTERN == 0 else "sliding_attention" for i in range(n_layers)]


def gemma3_attention_scalar(config: Any) -> int:
    """The query scaling llama.cpp applies for this shape (it reads no key for it)."""
    if config.num_hidden_layers == GEMMA3_27B_LAYERS:
        return config.hidden_size // config.num_attention_heads
    return head_dim(config)


def _gemma3_problems(config: Any) -> list[str]:
    problems = []
    layers = list(getattr(config, "layer_types", None) or [])
    if layers != gemma3_layer_types(config.num_hidden_layers):
        problems.append(f"layer layout {layers} (llama.cpp fixes Gemma 3's: every {GEMMA3_PATTERN}th layer "
                        "global, the others sliding-window)")
    if not getattr(config, "sliding_window", None) and "sliding_attention" in layers:
        problems.append("local layers without a sliding window")
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is None or not math.isclose(float(scalar), gemma3_attention_scalar(config)):
        problems.append(f"query_pre_attn_scalar {scalar} (llama.cpp scales queries by 1/sqrt("
                        f"{gemma3_attention_scalar(config)}) for this shape)")
    local = rope_params(config, "sliding_attention")
    if local["rope_type"] != "default" or float(local["rope_theta"]) != GEMMA3_LOCAL_THETA:
        problems.append(f"local-layer RoPE {local['rope_type']} base {local['rope_theta']} "
                        f"(llama.cpp fixes default RoPE, base {GEMMA3_LOCAL_THETA:g})")
    full = rope_params(config, "full_attention")
    if full["rope_type"] not in ("default", "linear"):
        problems.append(f"global-layer RoPE scaling {full['rope_type']!r} (supported here: default, linear)")
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, name, None):
            problems.append(f"{name} {getattr(config, name)}")
    if getattr(config, "use_bidirectional_attention", False):
        problems.append("bidirectional attention")
    if getattr(config, "attention_bias", False):
        problems.append("bias terms in attention")
    if getattr(config, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"activation {config.hidden_activation!r} (llama.cpp runs Gemma 3 with tanh-GELU)")
    return problems


# ----------------------------------------------------------------------------- metadata


def rope_freq_factors(config: Any) -> torch.Tensor | None:
    """llama.cpp's `rope_freqs` for `llama3` RoPE scaling: per rotary frequency, the default
    frequency over the scaled one (llama.cpp divides each angle by it). None without scaling.

    Computed with transformers' own llama3 rule from the run's config, so the divisors are the
    ones the run trained with (llama.cpp's converter reads `original_max_position_embeddings`
    from the top of config.json, falling back to 8192, where transformers reads the RoPE block).
    """
    if arch_spec(config).gguf != "llama" or rope_params(config)["rope_type"] != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    if attention_factor != 1.0:
        raise GgufExportError(f"GGUF export: llama3 RoPE with attention factor {attention_factor} has no GGUF form")
    dim = head_dim(config)
    base = float(rope_params(config)["rope_theta"])
    default = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return (default / scaled.float()).to(torch.float32)


def write_hparams(writer: Any, config: Any) -> None:
    """The architecture's `{arch}.*` keys: shape, attention, RoPE, norm epsilon."""
    spec = arch_spec(config)
    dim = head_dim(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(dim)
    if spec.gguf == "gemma3":
        _write_gemma3(writer, config, dim)
        return
    writer.add_rope_freq_base(float(rope_params(config)["rope_theta"]))
    if dim != config.hidden_size // config.num_attention_heads:  # llama.cpp's default is hidden / heads
        writer.add_key_length(dim)
        writer.add_value_length(dim)


def _write_gemma3(writer: Any, config: Any, dim: int) -> None:
    import gguf

    writer.add_key_length(dim)
    writer.add_value_length(dim)
    writer.add_sliding_window(int(config.sliding_window))
    full = rope_params(config, "full_attention")
    writer.add_rope_freq_base(float(full["rope_theta"]))  # the global layers' base; local is fixed
    if full["rope_type"] == "linear":  # llama.cpp applies it to the global layers only, as Gemma 3 does
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
