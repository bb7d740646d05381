"""Read an exported GGUF back as llama.cpp will run it, through transformers' GGUF loader.

transformers' loader reads the weights (undoing llama.cpp's layouts: the Q/K row permutation,
Gemma's 1 + w norms), the vocabulary, the chat template and the config keys it knows. A few
things llama.cpp takes from the file, or fixes in its code, the loader does not read.
`load_gguf_model` applies those from the file by llama.cpp's rules, explicitly, and names each
one it applied, so a check that passes says exactly what it covered:

- `rope_freqs` (Llama 3.1+'s `llama3` RoPE scaling): the loader skips the tensor and would run
  unscaled RoPE; here every rotary frequency is divided by its factor from the file, which is
  what llama.cpp's rope kernel does with it.
- Gemma 3's attention scale: llama.cpp derives it from the head size in `key_length` (hidden /
  heads for the 62-layer 27B shape); the loader leaves transformers' default of 256.
- Gemma 3's global-layer linear RoPE scaling (`rope.scaling.type`/`factor`): not read by the loader.
- Gemma 3's local/global layer layout: fixed in llama.cpp (every 6th layer global); set
  explicitly rather than relying on transformers' default being the same.

Not verifiable here (no llama.cpp on this machine): llama.cpp's own code: its kernels, and its
SentencePiece tokenizer, which with `add_space_prefix` puts "▁" before the text after *every*
special token, where transformers' tokenizers do so only at the start of the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunecraft.export.gguf_arch import GEMMA3_27B_LAYERS, gemma3_layer_types
from tunecraft.export.gguf_tensors import ROPE_FREQS


def gguf_field(reader: Any, key: str) -> Any:
    """A metadata value from the file, or None when the key is absent."""
    found = reader.fields.get(key)
    return None if found is None else found.contents()


def load_gguf_model(directory: Path, filename: str) -> tuple[Any, list[str]]:
    """The file as a float32 transformers model plus what llama.cpp reads that the loader does not
    (see the module docstring); returns (model, one line per rule applied)."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM

    reader = gguf.GGUFReader(str(directory / filename))
    config = AutoConfig.from_pretrained(str(directory), gguf_file=filename)
    applied = _gemma3_rules(reader, config) if gguf_field(reader, "general.architecture") == "gemma3" else []
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), gguf_file=filename, config=config, dtype=torch.float32
    ).eval()
    return model, applied + _apply_rope_freqs(reader, model)


def _gemma3_rules(reader: Any, config: Any) -> list[str]:
    """Set on the config what llama.cpp derives for `gemma3` and the loader leaves at defaults."""
    key = lambda name: gguf_field(reader, f"gemma3.{name}")  # noqa: E731
    layers, dim = int(key("block_count")), int(key("attention.key_length"))
    scalar = key("embedding_length") // key("attention.head_count") if layers == GEMMA3_27B_LAYERS else dim
    config.query_pre_attn_scalar = int(scalar)
    config.layer_types = gemma3_layer_types(layers)
    applied = [f"attention scale 1/sqrt({scalar}) (llama.cpp's rule for gemma3)",
               "local/global layers as llama.cpp fixes them (every 6th global)"]
    if key("rope.scaling.type") == "linear":
        factor = float(key("rope.scaling.factor"))
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict) and "full_attention" in params:  # transformers 5: per layer type
            full = dict(params["full_attention"], rope_type="linear", factor=factor)
            config.rope_parameters = {**params, "full_attention": full}
        else:  # transformers 4: rope_scaling is the global layers'
            config.rope_scaling = {"rope_type": "linear", "factor": factor}
        applied.append(f"global-layer linear RoPE scaling x{factor:g} from rope.scaling.*")
    return applied


def _apply_rope_freqs(reader: Any, model: Any) -> list[str]:
    """Divide each rotary frequency by the file's `rope_freqs` factor, as llama.cpp does."""
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return []
    factors = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    rotaries = [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    assert rotaries, "a model with rope_freqs has a rotary embedding"
    for rotary in rotaries:
        assert rotary.rope_type == "default", "the loader reads no RoPE scaling: inv_freq is the unscaled one"
        assert rotary.inv_freq.shape == factors.shape, (rotary.inv_freq.shape, factors.shape)
        scaled = rotary.inv_freq / factors
        rotary.inv_freq.copy_(scaled)
        rotary.original_inv_freq.copy_(scaled)
    return [f"rope_freqs: {len(factors)} RoPE frequency divisors from the file (transformers' loader ignores them)"]
