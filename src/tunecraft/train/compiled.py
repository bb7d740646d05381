"""Opt-in regional `torch.compile` of the decoder layers (`train.compile=true`).

Each repeated decoder layer is compiled with dynamic shapes: the layers share one code object,
so one compilation serves them all and the compile time does not grow with depth, and after a
recompile or two in the first steps the flat packed rows change length without recompiling.
Attention stays eager (see `train.attention`). Off by default: on the 2-core AMD EPYC it was
measured at ~4% faster per step for ~50 s of compiling over the first steps (README,
Performance), on the 2-core AMX Xeon at 0.90x the step time of fused-LoRA eager steps for 34 s
(12 s with a warm compile cache, 54 s cold), and the evaluation compiles a graph of its own: a
typical run does not win that back (docs/performance.md).
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
