"""Fixtures for model tests: a private Hugging Face cache, and helpers that fill it offline."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FAKE_COMMIT = "0" * 40


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache that huggingface_hub uses for this test only."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    # huggingface_hub reads this constant at call time when no cache_dir is passed.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def fill_hf_cache(hf_cache: Path) -> Callable[[str, Path], Path]:
    """`fill_hf_cache(repo_id, model_dir)` puts a repo into `hf_cache`; returns its snapshot dir."""
    return lambda repo_id, source: _add_to_hf_cache(hf_cache, repo_id, source)


def _add_to_hf_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay `source`'s files out the way huggingface_hub caches a downloaded repo."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            shutil.copy2(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT, encoding="utf-8")
    return snapshot
