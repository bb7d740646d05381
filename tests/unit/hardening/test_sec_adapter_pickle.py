"""Issue #18 item 2: a LoRA adapter without safetensors is refused, never unpickled.

peft falls back to `adapter_model.bin` (torch.load: pickle) when no safetensors file exists.
Here `torch.load` is replaced by a function that fails the test, and every loader that takes an
adapter (serve's first adapter, a second adapter on a shared base, export) must refuse first,
with a message naming the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from runs import build_lora_run
from safetensors.torch import load_file

from tunecraft.errors import UnsafeModelError

FIX = "safe_serialization=True"


def _pickled_adapter_run(base: Path, root: Path, name: str = "pickled") -> Path:
    """A real LoRA run whose adapter weights were saved the old way: adapter_model.bin only."""
    run = build_lora_run(root / name, base, seed=3)
    weights = run / "model" / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), run / "model" / "adapter_model.bin")  # the test writes pickle; nothing reads it
    weights.unlink()
    return run


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        pytest.fail("torch.load was called: an adapter was unpickled")

    monkeypatch.setattr(torch, "load", forbidden)


def test_serving_a_pickled_adapter_is_refused(tiny_model_dir: Path, tmp_path: Path, no_unpickling: None) -> None:
    from tunecraft.serve.engine import load_target

    run = _pickled_adapter_run(tiny_model_dir, tmp_path)
    with pytest.raises(UnsafeModelError, match="only pickle weights") as err:
        load_target(str(run))
    assert FIX in str(err.value) and "adapter_model.safetensors" in str(err.value)


def test_a_second_adapter_on_a_shared_base_is_checked_too(tiny_model_dir: Path, tmp_path: Path, no_unpickling: None) -> None:
    """The first adapter wraps the base in a PeftModel; the next goes through load_adapter."""
    from tunecraft.serve.server import load_targets

    good = build_lora_run(tmp_path / "good", tiny_model_dir, seed=1)
    bad = _pickled_adapter_run(tiny_model_dir, tmp_path)
    with pytest.raises(UnsafeModelError, match=FIX):
        load_targets([str(good), str(bad)])


def test_exporting_a_pickled_adapter_is_refused(tiny_model_dir: Path, tmp_path: Path, no_unpickling: None) -> None:
    from tunecraft.export import export_run

    run = _pickled_adapter_run(tiny_model_dir, tmp_path)
    with pytest.raises(UnsafeModelError, match=FIX):
        export_run(run, "merged", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merging_checks_the_adapter_itself(tiny_model_dir: Path, tmp_path: Path, no_unpickling: None) -> None:
    """Export's merge path loads the adapter on its own (not through serve's loader): checked there too."""
    from tunecraft.export.export import _float_model
    from tunecraft.rundir import read_run

    info = read_run(_pickled_adapter_run(tiny_model_dir, tmp_path))
    with pytest.raises(UnsafeModelError, match=FIX):
        _float_model(info, torch.float32, trust_remote_code=False)


def test_a_safetensors_adapter_still_loads(tiny_model_dir: Path, tmp_path: Path, no_unpickling: None) -> None:
    from tunecraft.serve.engine import load_target

    run = build_lora_run(tmp_path / "fine", tiny_model_dir, seed=5)
    assert load_target(str(run)).adapter == "fine"
