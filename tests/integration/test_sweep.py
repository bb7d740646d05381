"""`tunecraft sweep`: a tiny grid trains each variant into its own run dir and ranks them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import write_chat_data
from tunecraft.errors import ConfigError
from tunecraft.train.sweep import expand, parse_grid, run_sweep


def test_grid_parsing_aliases_and_names() -> None:
    axes = parse_grid(["lr=1e-4,3e-4", "epochs=1,3", "lora.dropout=0.1"])
    assert axes == [("train.lr", ["1e-4", "3e-4"]), ("train.epochs", ["1", "3"]), ("lora.dropout", ["0.1"])]
    names = [v.name for v in expand(axes)]
    assert names == ["lr=1e-4_epochs=1", "lr=1e-4_epochs=3", "lr=3e-4_epochs=1", "lr=3e-4_epochs=3"]
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_grid(["lr"])


def _config(tmp_path: Path, model: Path) -> Path:
    cfg = {
        "model": {"name": str(model)},
        "data": {"train": str(write_chat_data(tmp_path / "train.jsonl", 24))},
        "train": {"method": "full", "precision": "fp32", "epochs": 1, "batch_size": 8, "micro_batch_size": 8},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sweep_ranks_variants_by_validation_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_model_dir)
    out = tmp_path / "sweep"
    result = run_sweep(str(config), ["lr=1e-5,1e-2"], out)
    names = {v["name"] for v in result["variants"]}
    assert names == {"lr=1e-5", "lr=1e-2"}
    losses = [v["best_val_loss"] for v in result["variants"]]
    assert losses == sorted(losses)
    assert result["best"] == "lr=1e-2"  # a 1000x larger LR learns more in the same steps
    assert "best: lr=1e-2" in result["evidence"]
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["best"] == "lr=1e-2" and saved["ranked_by"] == "best_val_loss"
    for v in saved["variants"]:
        run = Path(v["run_dir"])
        assert (run / "summary.json").is_file() and (run / "model").is_dir() and v["verdict"]
    # a finished variant is reused, not retrained
    before = (out / "lr=1e-2" / "summary.json").stat().st_mtime_ns
    run_sweep(str(config), ["lr=1e-5,1e-2"], out)
    assert (out / "lr=1e-2" / "summary.json").stat().st_mtime_ns == before


def test_sweep_cli_rejects_a_bad_value_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_model_dir)
    res = subprocess.run(
        [sys.executable, "-m", "tunecraft", "sweep", str(config), "--grid", "lr=1e-3,5", "--out", str(tmp_path / "s")],
        capture_output=True, text=True,
    )
    assert res.returncode == 2 and "train.lr" in res.stderr
    assert not (tmp_path / "s").exists()
