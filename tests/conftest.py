"""Shared fixtures: an isolated TUNECRAFT_HOME, tiny models, and the real default model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import build_model_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets a fresh TUNECRAFT_HOME unless it asks for the shared one."""
    if "TUNECRAFT_TEST_SHARED_HOME" in os.environ:
        return
    monkeypatch.setenv("TUNECRAFT_HOME", str(tmp_path_factory.mktemp("tchome")))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a ChatML tokenizer (built once per session)."""
    return build_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real embedded default, converted once into a session cache (smoke tests only)."""
    from tunecraft.models.resolve import resolve_model

    home = os.environ.get("TUNECRAFT_SMOKE_HOME") or str(Path.home() / ".cache" / "tunecraft-tests")
    old = os.environ.get("TUNECRAFT_HOME")
    os.environ["TUNECRAFT_HOME"] = home
    try:
        return resolve_model("smollm2-135m-instruct").path
    finally:
        if old is None:
            os.environ.pop("TUNECRAFT_HOME", None)
        else:
            os.environ["TUNECRAFT_HOME"] = old


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir: Path):
    from tunecraft.models.load import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from tunecraft.models.load import load_tokenizer

    return load_tokenizer(tiny_model_dir)
