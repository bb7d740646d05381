"""Opt-in regional `torch.compile` of the decoder layers (`train.compile=true`).

Each repeated decoder layer is compiled with dynamic shapes: the layers share one code object,
so one compilation serves them all and the compile time does not grow with depth, and after a
recompile or two in the first steps the flat packed rows change length without recompiling.
Attention stays eager (see `train.attention`). Off by default: on the 2-core CPU it was
measured at ~4% faster per step for ~50 s of compiling over the first steps (README,
Performance), which a typical run does not win back.
"""

from __future__ import annotations

from typing import Any

from tunecraft.models.facts import decoder_layers, unwrap


def compile_decoder_layers(model: Any) -> int:
    """Compile every decoder layer in place (nn.Module.compile); returns how many."""
    layers = decoder_layers(unwrap(model))
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
