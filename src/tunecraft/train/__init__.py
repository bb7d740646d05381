"""Train: one loop for full and LoRA fine-tuning, with checkpoints, resume and early stopping."""
