"""LoRA through peft: which parameters train (adapters only, seeded init)."""

from __future__ import annotations

from typing import Any

import torch

from tunecraft.config import LoraConfig


def apply_lora(model: Any, cfg: LoraConfig, seed: int) -> Any:
    """Wrap `model` in a PeftModel; only the adapters require grad (kept in fp32 by peft)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # LoRA A init is random: make it part of the seeded run
    return get_peft_model(model, peft_cfg)
