"""A run's LoRA adapter as a GGUF adapter for llama.cpp's `--lora` (llama-server, llama-cli).

llama.cpp's adapter file (what its convert_lora_to_gguf.py writes and llama-adapter.cpp reads):
- `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`, and the base's
  `general.architecture` (llama.cpp refuses an adapter made for another architecture);
- per adapted weight W, named as in the base model's GGUF (`blk.0.attn_q.weight`), two tensors:
  `blk.0.attn_q.weight.lora_a` (r, in) and `blk.0.attn_q.weight.lora_b` (out, r), numpy shapes;
  llama.cpp computes W x + (alpha / r) B (A x), with r read from lora_a's shape;
- B's rows follow the base GGUF's row order: for `llama`, Q and K rows are permuted per head for
  llama.cpp's interleaved RoPE, so lora_b gets that permutation (A's columns are the layer's
  inputs, which are not permuted).

PEFT scales each module by its own factor (lora_alpha / r, / sqrt(r) with rsLoRA, per-module
patterns); the file has one alpha. alpha is the first module's scale x r, and a module whose
scale differs has the ratio folded into its B, so alpha / r x B A is exactly PEFT's delta.
transformers cannot load an adapter GGUF: `check_lora_gguf` reads the file back with gguf-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunecraft.export.gguf_arch import ARCHS, GgufExportError, arch_spec
from tunecraft.export.gguf_tensors import GgufType, encode, gguf_name, name_map, rope_rows, to_gguf_layout

LORA_TYPES: tuple[str, ...] = ("f32", "f16", "q8_0")  # llama.cpp's converter offers these (and bf16)
ADAPTER = "default"  # the adapter name tunecraft's runs load


@dataclass
class LoraPair:
    module: str  # HF module path, e.g. "model.layers.0.self_attn.q_proj"
    a: np.ndarray  # (r, in)
    b: np.ndarray  # (out, r)
    scale: float  # PEFT's multiplier of B A for this module

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


def lora_pairs(peft_model: Any) -> list[LoraPair]:
    """Every LoRA (A, B, scale) of the PEFT model's adapter; refuses what llama.cpp cannot apply."""
    from peft.tuners.lora import LoraLayer

    problems, pairs = [], []
    cfg = peft_model.peft_config[ADAPTER]
    tied = bool(getattr(peft_model.get_base_model().config, "tie_word_embeddings", False))
    if getattr(cfg, "modules_to_save", None):
        problems.append(f"fully trained modules {sorted(cfg.modules_to_save)} (a LoRA GGUF holds only A/B pairs)")
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.r:
            continue
        hf = name.removeprefix("base_model.model.")
        if tied and hf == "lm_head":
            problems.append("LoRA on the output layer of tied embeddings (the base GGUF has no `output` tensor)")
            continue
        if ADAPTER not in module.lora_A:
            problems.append(f"{hf}: LoRA on an embedding")
            continue
        variant = getattr(module, "lora_variant", {}).get(ADAPTER)  # peft >= 0.16: DoRA and the like
        if variant is not None or module.use_dora.get(ADAPTER) or getattr(module, "lora_bias", {}).get(ADAPTER):
            problems.append(f"{hf}: a LoRA variant (DoRA or a LoRA bias) llama.cpp does not apply")
            continue
        if not isinstance(module.get_base_layer(), torch.nn.Linear):
            problems.append(f"{hf}: LoRA on a {type(module.get_base_layer()).__name__}")
            continue
        a = module.lora_A[ADAPTER].weight.detach().float().cpu().numpy()
        b = module.lora_B[ADAPTER].weight.detach().float().cpu().numpy()
        pairs.append(LoraPair(hf, a, b, float(module.scaling[ADAPTER])))
    if not pairs and not problems:
        problems.append("no LoRA layers")
    if problems:
        raise GgufExportError("GGUF LoRA export cannot represent this adapter: " + "; ".join(problems)
                              + ". Export --format merged and convert that to GGUF instead.")
    return pairs


def write_lora_gguf(peft_model: Any, path: Path, gtype: GgufType, name: str) -> float:
    """Write the adapter of `peft_model` (a PeftModel over the run's base) to `path`; returns alpha."""
    import gguf

    cfg = peft_model.get_base_model().config
    if cfg.model_type not in ARCHS:
        raise GgufExportError(f"GGUF LoRA export: architecture {cfg.model_type!r} (supported: {', '.join(ARCHS)})")
    if gtype not in LORA_TYPES:
        raise GgufExportError(f"GGUF LoRA export: --gguf-type {gtype} (use {', '.join(LORA_TYPES)}: 4-bit A/B "
                              "factors lose most of an adapter, and llama.cpp's converter does not offer them)")
    pairs = lora_pairs(peft_model)
    alpha = pairs[0].scale * pairs[0].rank
    names = name_map(cfg)
    writer = gguf.GGUFWriter(str(path), arch=arch_spec(cfg).gguf)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for pair in pairs:
        base = gguf_name(pair.module + ".weight", names)
        fold = pair.scale * pair.rank / alpha  # 1.0 unless this module's PEFT scale differs
        b = rope_rows(pair.module, pair.b * np.float32(fold), cfg)  # rows in the base GGUF's order
        for suffix, data in (("lora_a", pair.a), ("lora_b", b)):
            encoded, raw = encode(data, gtype)
            writer.add_tensor(f"{base}.{suffix}", encoded, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return alpha


# ----------------------------------------------------------------------------- reading it back


@dataclass
class LoraCheck:
    arch: str
    alpha: float
    pairs: int
    worst: float  # max |(W0 + alpha/r B A) - W_merged| over all adapted weights, in the GGUF layout
    scale: float  # max |W_merged - W0|: the size of what the adapter changes


def check_lora_gguf(path: Path, base: Any, merged: Any) -> LoraCheck:
    """Read the file with gguf-py and rebuild each merged weight as llama.cpp will: base weight in
    the base GGUF's layout (Q/K rows permuted for `llama`) + alpha / r x lora_b @ lora_a, against
    the run's merged model in the same layout. Raises when the metadata is not llama.cpp's or a
    weight the adapter changes has no pair; returns the sizes for the caller's tolerance."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    cfg = base.config
    expected = {"general.type": "adapter", "adapter.type": "lora", "general.architecture": arch_spec(cfg).gguf}
    wrong = {k: field(k) for k, v in expected.items() if field(k) != v}
    if wrong or field("adapter.lora.alpha") is None:
        raise GgufExportError(f"{path.name}: not a llama.cpp LoRA adapter for {expected['general.architecture']}: {wrong}")
    alpha = float(field("adapter.lora.alpha"))
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    names = name_map(cfg)
    base_sd, merged_sd = base.state_dict(), merged.state_dict()
    worst, scale, pairs = 0.0, 0.0, 0
    for hf_name, w0 in base_sd.items():
        if not hf_name.endswith(".weight") or w0.ndim != 2 or names.get_name(hf_name[: -len(".weight")]) is None:
            continue
        key = gguf_name(hf_name, names)
        before = to_gguf_layout(hf_name, w0.float().numpy(), cfg)
        after = to_gguf_layout(hf_name, merged_sd[hf_name].float().numpy(), cfg)
        scale = max(scale, float(np.abs(after - before).max()))
        if f"{key}.lora_a" not in tensors:
            if not np.array_equal(before, after):
                raise GgufExportError(f"{path.name}: {key} changed in the merged model but has no LoRA pair")
            continue
        a, b = tensors[f"{key}.lora_a"], tensors[f"{key}.lora_b"]
        rebuilt = before + (alpha / a.shape[0]) * (b.astype(np.float64) @ a.astype(np.float64))
        worst = max(worst, float(np.abs(rebuilt - after).max()))
        pairs += 1
    if 2 * pairs != len(tensors):
        raise GgufExportError(f"{path.name}: {len(tensors)} tensors for {pairs} LoRA pairs (names llama.cpp would not find)")
    return LoraCheck(str(field("general.architecture")), alpha, pairs, worst, scale)
