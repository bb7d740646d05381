"""Short tiny-model training runs whose per-step numbers are pinned in `pinned.json`.

Each scenario is a real `tunecraft train` command (the CLI is the stable surface) on the tiny
random Llama of `tests/tiny.py` and its 64-row chat dataset, in deterministic fp32 with one
thread. `python tests/references/scenarios.py` rewrites `pinned.json`: do that only for a
change that is *meant* to alter what training computes, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PINNED = HERE / "pinned.json"
sys.path.insert(0, str(HERE.parent))

# name -> extra CLI arguments. Batch 8 in micro-batches of 4: every step accumulates two.
SCENARIOS: dict[str, list[str]] = {
    "full-fast": ["--method", "full", "--engine", "fast", "--lr", "3e-3"],
    "full-reference": ["--method", "full", "--engine", "reference", "--lr", "3e-3"],
    "lora-fast": ["--method", "lora", "--engine", "fast", "--lr", "1e-2", "lora.r=4", "lora.alpha=8"],
    "lora-reference": ["--method", "lora", "--engine", "reference", "--lr", "1e-2", "lora.r=4", "lora.alpha=8"],
}
COMMON = [
    "--max-steps", "8", "--batch-size", "8", "--seed", "7", "train.micro_batch_size=4",
    "train.eval_every=4", "train.save_every=8", "train.patience=null", "train.deterministic=true",
    "train.threads=1", "train.precision=fp32",
]
# Stated tolerances: kernels may differ between machines (the oneDNN/BLAS choice is probed per
# process), which moves fp32 results in the 7th digit; any change in what is computed (mask,
# normalization, schedule, order of examples, initialization) moves them far more.
TOLERANCE = {"loss": 2e-5, "val_loss": 2e-5, "grad_norm": 1e-4, "lr": 1e-9}


def make_assets(root: Path) -> tuple[Path, Path]:
    from tiny import build_model_dir, write_chat_data

    model = build_model_dir(root / "tiny-model")
    data = write_chat_data(root / "train.jsonl", 64)
    return model, data


def run_scenario(name: str, model: Path, data: Path, root: Path) -> dict[str, Any]:
    """Train one scenario in a fresh process; its per-step numbers from metrics.jsonl."""
    out = root / name
    cmd = [sys.executable, "-m", "tunecraft", "train", "--model", str(model), "--data", str(data),
           "--out", str(out), *COMMON, *SCENARIOS[name]]
    env = {**os.environ, "TUNECRAFT_HOME": str(root / "home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["type"] == "train"]
    evals = [r for r in rows if r["type"] == "eval"]
    return {
        "step": [r["step"] for r in train],
        "loss": [r["loss"] for r in train],
        "grad_norm": [r["grad_norm"] for r in train],
        "lr": [r["lr"] for r in train],
        "tokens": [r["tokens"] for r in train],
        "eval_step": [r["step"] for r in evals],
        "val_loss": [r["val_loss"] for r in evals],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = make_assets(root)
        pinned = {name: run_scenario(name, model, data, root) for name in SCENARIOS}
    PINNED.write_text(json.dumps({"tolerance": TOLERANCE, "scenarios": pinned}, indent=1) + "\n")
    print(f"wrote {PINNED}")


if __name__ == "__main__":
    main()
