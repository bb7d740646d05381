"""QLoRA without bitsandbytes in the venv, and the QLoRA suite with it.

bitsandbytes is not installed into the project's venv (see docs/qlora.md: once installed, every
`import peft` imports it, ~2 s of CPU, and on AVX-512 BF16 CPUs it asks the Hugging Face Hub
for a kernel at import). `make test` installs it beside the venv (.venv/qlora-site); the 4-bit
parity, training and plan tests (qlora_suite.py) run in a child pytest that has it on its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunecraft.config import build_config
from tunecraft.errors import ConfigError
from tunecraft.train import lora
from tunecraft.train.plan import make_plan

HERE = Path(__file__).resolve().parent
SITE = Path(sys.prefix) / "qlora-site"  # where `make test` puts bitsandbytes


def test_without_bitsandbytes_a_qlora_run_is_refused_with_the_install_command(make_cfg) -> None:
    if lora.package_available("bitsandbytes"):
        pytest.fail("bitsandbytes is installed in the venv: this test checks the venv without it")
    with pytest.raises(ConfigError) as err:
        make_plan(make_cfg(**{"train.method": "lora", "lora.quantize": "nf4"}))
    assert "needs bitsandbytes, not installed here: pip install 'bitsandbytes>=0.50.2'" in str(err.value)
    assert lora.qlora_problems(build_config(values={"lora.quantize": "none"}), lora.torch.device("cpu")) == []


def test_the_qlora_suite_passes_with_bitsandbytes() -> None:
    assert (SITE / "bitsandbytes").is_dir(), f"{SITE} has no bitsandbytes: run `make test` (it installs it there)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1"}  # bitsandbytes' import-time kernel lookup must not reach the Hub
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "qlora_suite.py")],
                         cwd=HERE.parents[2], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout and "deselected" not in res.stdout
