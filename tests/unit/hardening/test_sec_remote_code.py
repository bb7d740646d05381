"""Issue #18 item 1: a run directory cannot switch on a model's own code; only the command's flag can.

The run here is a real full fine-tuning run directory whose `config.yaml` asks for remote code
and whose `model/config.json` points (auto_map) at a module in the directory that writes a
sentinel file when imported. Loading it without `--trust-remote-code` must refuse, clearly,
before that module is ever imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runs import build_full_run

from tunecraft.config import dump_config, load_config
from tunecraft.errors import UnsafeModelError

CODE = '''"""Stands for a downloaded model's code: it must only ever run when the user asked for it."""
from pathlib import Path

Path({sentinel!r}).write_text("remote code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class SentinelConfig(LlamaConfig):
    model_type = "sentinel_llama"


class SentinelForCausalLM(LlamaForCausalLM):
    config_class = SentinelConfig
'''


def _remote_code_run(tiny_model_dir: Path, root: Path) -> tuple[Path, Path]:
    """(run dir, sentinel path): a full run whose model needs its own code and whose config asks for it."""
    run = build_full_run(root / "downloaded-run", tiny_model_dir)
    sentinel = root / "SENTINEL"
    model_dir = run / "model"
    (model_dir / "sentinel_code.py").write_text(CODE.format(sentinel=str(sentinel)), encoding="utf-8")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config.update(
        model_type="sentinel_llama",
        architectures=["SentinelForCausalLM"],
        auto_map={"AutoConfig": "sentinel_code.SentinelConfig", "AutoModelForCausalLM": "sentinel_code.SentinelForCausalLM"},
    )
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    cfg = load_config(run / "config.yaml")
    cfg.model.trust_remote_code = True  # what a hostile (or careless) run directory would carry
    dump_config(cfg, run / "config.yaml")
    return run, sentinel


@pytest.fixture()
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where transformers would copy remote code: a temp dir, so nothing lands in the user's cache."""
    import transformers.dynamic_module_utils as dmu

    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setenv("HF_MODULES_CACHE", str(cache))
    return cache


def test_serve_refuses_a_run_whose_config_asks_for_remote_code(tiny_model_dir: Path, tmp_path: Path, modules_cache: Path) -> None:
    from tunecraft.serve.server import load_targets

    run, sentinel = _remote_code_run(tiny_model_dir, tmp_path)
    with pytest.raises(UnsafeModelError, match="--trust-remote-code") as err:
        load_targets([str(run)])
    assert "auto_map" in str(err.value) and "sentinel_code.SentinelForCausalLM" in str(err.value)
    assert not sentinel.exists()


def test_export_refuses_it_too(tiny_model_dir: Path, tmp_path: Path, modules_cache: Path) -> None:
    from tunecraft.export import export_run

    run, sentinel = _remote_code_run(tiny_model_dir, tmp_path)
    with pytest.raises(UnsafeModelError, match="--trust-remote-code"):
        export_run(run, "merged", tmp_path / "out")
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_run_info_carries_no_remote_code_switch(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tunecraft.rundir import read_run

    run, _ = _remote_code_run(tiny_model_dir, tmp_path)
    assert not hasattr(read_run(run), "trust_remote_code")


def test_native_model_with_stale_auto_map_loads_without_running_code(tiny_model_dir: Path, tmp_path: Path, modules_cache: Path) -> None:
    """auto_map next to a model_type transformers knows: loaded natively, the code never imported."""
    from tunecraft.serve.engine import load_target

    run, sentinel = _remote_code_run(tiny_model_dir, tmp_path)
    config_path = run / "model" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    config_path.write_text(json.dumps(config), encoding="utf-8")
    lm = load_target(str(run))
    assert type(lm.shared.module).__name__ == "LlamaForCausalLM"
    assert not sentinel.exists()


def _chat_cli(run: Path, modules: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_MODULES_CACHE": str(modules), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunecraft", "chat", str(run), "--max-tokens", "2", *flags],
        input="hi\n", capture_output=True, text=True, timeout=180, env=env,
    )


def test_only_the_chat_flag_enables_remote_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    run, sentinel = _remote_code_run(tiny_model_dir, tmp_path)
    refused = _chat_cli(run, tmp_path / "modules")
    assert refused.returncode == 1, refused.stderr
    assert "--trust-remote-code" in refused.stderr and "Traceback" not in refused.stderr
    assert not sentinel.exists()
    allowed = _chat_cli(run, tmp_path / "modules", "--trust-remote-code")
    assert allowed.returncode == 0, allowed.stderr
    assert sentinel.read_text() == "remote code ran"  # the user asked: the model's code ran


def test_resume_never_takes_remote_code_from_the_run_directory(tmp_path) -> None:
    """`train --resume` reads the run's config.yaml, but not its trust_remote_code."""
    from tunecraft.config import build_config, dump_config
    from tunecraft.train.entry import resolve_config

    run = tmp_path / "shared-run"
    run.mkdir()
    dump_config(build_config(values={"model.trust_remote_code": True, "train.out": str(run)}), run / "config.yaml")
    assert resolve_config([], {"train.out": str(run)}, resume=True).model.trust_remote_code is False
    asked = resolve_config(["model.trust_remote_code=true"], {"train.out": str(run)}, resume=True)
    assert asked.model.trust_remote_code is True  # the command's own explicit flag
