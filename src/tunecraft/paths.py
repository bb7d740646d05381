"""Where tunecraft keeps its caches: `$TUNECRAFT_HOME`, else the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    """The root of tunecraft's cache (converted models, tokenized data)."""
    env = os.environ.get("TUNECRAFT_HOME")
    root = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("tunecraft"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted Hugging Face model directories, one per source model."""
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_cache_dir() -> Path:
    """Tokenized datasets, keyed by data + tokenizer + template + max length."""
    path = home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path
