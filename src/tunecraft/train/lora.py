"""LoRA through peft: which parameters train, and counting parameters before loading weights."""

from __future__ import annotations

from pathlib import Path
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
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)  # LoRA A init is random: make it part of the seeded run
    return get_peft_model(model, peft_cfg)


def count_params(model_dir: Path, trust_remote_code: bool = False) -> int:
    """Parameter count from config.json alone (built on the meta device: no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def trainable_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
