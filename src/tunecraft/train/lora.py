"""LoRA through peft: which parameters train (adapters only, seeded init), and QLoRA's 4-bit base.

QLoRA (`lora.quantize: nf4`) loads the frozen base with its linear weights in 4-bit NormalFloat
(bitsandbytes, through transformers' `BitsAndBytesConfig`) and trains the same peft adapters
over them. Only the base's storage changes: the adapter tensors, the deliverable (a plain PEFT
adapter naming the original model) and the checkpoints are those of LoRA, and a merged export
merges into the original full-precision weights, never into quantized ones.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

from tunecraft.config import LoraConfig, RunConfig

# Without brackets: the CLI prints messages through rich, which would read "[qlora]" as markup.
QLORA_INSTALL = "pip install 'bitsandbytes>=0.50.2' 'accelerate>=1.1' (tunecraft's qlora extra)"
# Where tunecraft trains (its runtime picks a CUDA GPU, else the CPU) and bitsandbytes 4-bit runs.
QLORA_DEVICES = ("cuda", "cpu")


def apply_lora(model: Any, cfg: LoraConfig, seed: int) -> Any:
    """Wrap `model` in a PeftModel; only the adapters require grad (kept in fp32 by peft).

    Plain LoRA's layers are `FusedLoraLinear`s (peft's layer with a one-function training
    product, registered through peft's custom-module mapping); anything else is peft's own.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from tunecraft.train import lora_linear

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
    )
    if lora_linear.applies(cfg):
        peft_cfg._register_custom_module({torch.nn.Linear: lora_linear.FusedLoraLinear})
    if cfg.quantize != "none":
        keep_trainable_layout(model)
    torch.manual_seed(seed)  # LoRA A init is random: make it part of the seeded run
    return get_peft_model(model, peft_cfg)


@contextlib.contextmanager
def bf16_adapters(model: Any, device_type: str, cfg: LoraConfig) -> Iterator[bool]:
    """Run the block's adapter products in bf16 from their fp32 weights; yields whether it does.

    peft keeps the adapters in fp32 and casts each layer's bf16 input up to them, so every
    adapted layer of a bf16 run pays two fp32 products (slower than bf16 where the CPU has
    native bf16) and two casts. Under autocast, with peft's input cast switched off (its public
    `disable_input_dtype_casting`), the products run in bf16 and the gradients still reach the
    fp32 adapters in fp32, the mixed precision full fine-tuning uses. Measured on the default
    model, 2-core AMD EPYC (AVX-512 BF16), rank 64 on every linear layer: 0.82x the step time,
    the same losses to bf16 rounding. Plain LoRA and rsLoRA only: a 4-bit base (QLoRA) and DoRA
    keep peft's own casts. Without dropout, plain LoRA's layers are `FusedLoraLinear`s, which
    multiply in the base's dtype themselves: no autocast then (it dispatches every operation of
    the step), and the block yields True all the same.
    """
    from tunecraft.train import lora_linear

    if cfg.quantize != "none" or cfg.use_dora:
        yield False
        return
    if lora_linear.applies(cfg):
        yield True
        return
    from peft.helpers import disable_input_dtype_casting

    with torch.autocast(device_type, dtype=torch.bfloat16), disable_input_dtype_casting(model):
        yield True


# ----------------------------------------------------------------------------- evaluation


def _mergeable_layers(model: Any) -> list[Any] | None:
    """The model's LoRA layers when each can stand in as one merged weight (plain LoRA or
    rsLoRA over an unquantized linear, one adapter), else None."""
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        weight = getattr(m.get_base_layer(), "weight", None)
        if (not isinstance(m, LoraLinear) or weight is None or not weight.is_floating_point()
                or list(m.lora_A) != ["default"] or m.use_dora.get("default") or m.merged or m.disable_adapters):
            return None
    return layers or None


def merge_bytes(model: Any) -> int:
    """Extra memory an evaluation on merged weights takes: one copy of each adapted weight."""
    layers = _mergeable_layers(model) or []
    return sum(m.get_base_layer().weight.nelement() * m.get_base_layer().weight.element_size() for m in layers)


@contextlib.contextmanager
def merged_for_eval(model: Any, enabled: bool = True) -> Iterator[bool]:
    """Run the block on W + scale * B A in each adapted layer, the adapters switched off; yields
    whether it merged. An evaluation pass then costs what the base model's costs: on the default
    model, bf16 CPU, 300 BANKING77 validation examples took 14.2 s through the adapters (their
    fp32 casts and two thin products in every layer) and 8.1 s merged.

    The merged weight is a new tensor; each layer's own weight object is put back afterwards, so
    training resumes on exactly the weights it left (peft's in-place merge and unmerge would
    round the bf16 base twice). Merging rounds W + scale * B A once to the base's dtype: in bf16
    the loss moves by ~0.1% (5.3490 -> 5.3570 above), in fp32 by float noise.
    """
    layers = _mergeable_layers(model) if enabled else None
    if layers is None or not hasattr(model, "disable_adapter"):
        yield False
        return
    saved = []
    try:
        with torch.no_grad():
            for m in layers:
                base = m.get_base_layer()
                delta = m.get_delta_weight("default")
                saved.append((base, base.weight))
                merged = (base.weight.float() + delta.float()).to(base.weight.dtype)
                base.weight = torch.nn.Parameter(merged, requires_grad=False)
        with model.disable_adapter():
            yield True
    finally:
        for base, weight in saved:
            base.weight = weight


# ----------------------------------------------------------------------------- QLoRA


def four_bit_config(quantize: str, compute_dtype: torch.dtype) -> Any | None:
    """transformers' BitsAndBytesConfig for `lora.quantize` (None: "none", a full-precision base).

    NF4 with double quantization is the QLoRA paper's recipe: 4-bit codes, one 8-bit scale per
    64 weights, one fp32 scale per 256 of those (~0.52 byte per weight). The de-quantized
    weight is multiplied in the run's compute dtype (fp32 or bf16, as the plan chose).
    """
    if quantize == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def keep_trainable_layout(model: torch.nn.Module) -> int:
    """Keep every 4-bit linear of `model` in the layout that has a backward pass; how many.

    On CPUs with AVX-512 BF16, bitsandbytes (0.50) repacks a `Linear4bit`'s weight in place the
    first time it runs in eval mode without grad (an evaluation), into an inference-only layout
    with bf16 scales that every later forward then uses: measured on a tiny model, training
    after one evaluation computed the adapters' gradients wrong by ~100% (relative norm), with
    no error. Each module's own `support_avx512bf16_for_cpu` switch (set by its constructor
    from the CPU's flags) turns that repacking off; evaluation then uses the same de-quantize
    and matmul as training.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def qlora_problems(cfg: RunConfig, device: torch.device) -> list[str]:
    """What stops `lora.quantize` from running here, each with its fix (empty: nothing)."""
    quantize = cfg.lora.quantize
    if quantize == "none":
        return []
    where = f"lora.quantize: {quantize}"
    problems = []
    if cfg.train.method == "full":
        problems.append(f"{where} trains LoRA adapters over a 4-bit base, but train.method is full (4-bit "
                        "weights cannot be trained); use --method lora, or lora.quantize=none")
    if cfg.train.sharding == "fsdp":
        problems.append(f"{where} does not run with train.sharding=fsdp (FSDP cannot shard bitsandbytes' "
                        "4-bit weights); use train.sharding=ddp")
    missing = [name for name in ("bitsandbytes", "accelerate") if not package_available(name)]
    if missing:
        problems.append(f"{where} needs {' and '.join(missing)}, not installed here: {QLORA_INSTALL}")
        return problems
    unsupported = device_problem(device.type)
    if unsupported is not None:
        problems.append(f"{where}: {unsupported}")
    return problems


def package_available(name: str) -> bool:
    """Whether `name` can be imported here (found, not imported: importing bitsandbytes is slow)."""
    return importlib.util.find_spec(name) is not None


def device_problem(device_type: str) -> str | None:
    """Why 4-bit training cannot run on `device_type` (None: a 4-bit layer trained there)."""
    version = importlib.metadata.version("bitsandbytes")
    if device_type not in QLORA_DEVICES:
        return (f"tunecraft trains 4-bit bases on {' and '.join(QLORA_DEVICES)} (bitsandbytes {version}), "
                f"not on {device_type}; use lora.quantize=none")
    failure = probe_4bit(device_type)
    if failure is None:
        return None
    return (f"bitsandbytes {version} could not run a 4-bit layer on {device_type} ({failure}); reinstall it "
            f"for this machine ({QLORA_INSTALL}), or use lora.quantize=none")


@functools.cache
def probe_4bit(device_type: str) -> str | None:
    """Quantize a small layer on the device, run it forward and backward; the error, or None.

    Which devices bitsandbytes supports depends on the build installed and the machine (its
    native library, the CUDA version), so the check is a real 4-bit product and its input
    gradient, each compared with `F.linear` over the de-quantized weight.
    """
    try:
        import bitsandbytes as bnb

        gen = torch.Generator().manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64, generator=gen), requires_grad=False, quant_type="nf4")
        layer = layer.to(device_type)
        x = torch.randn(4, 64, generator=gen).to(device_type).requires_grad_(True)
        y = layer(x)
        y.sum().backward()
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()  # (64, 64)
        expected_y, expected_grad = x.detach() @ weight.T, weight.sum(0).expand(4, 64)
    except Exception as exc:  # noqa: BLE001 - any failure means "not here"; its text goes to the user
        return f"{type(exc).__name__}: {exc}"
    if not torch.allclose(y.detach().float(), expected_y, rtol=1e-3, atol=1e-3):
        return "its 4-bit product differs from the de-quantized weight's"
    if x.grad is None or not torch.allclose(x.grad.float(), expected_grad, rtol=1e-3, atol=1e-3):
        return "its gradient differs from the de-quantized weight's"
    return None
