"""Convert a GGUF file into a cached Hugging Face directory, once, atomically.

Training needs a float model in a normal HF directory: transformers de-quantizes GGUF on load
(~20 s for the default model), and its Trainer-era code refuses models still marked as GGUF
quantized. So we convert once into `$TUNECRAFT_HOME/models/<key>/` and reuse it.

Atomicity: a file lock serializes converters; the result is written to a temporary directory,
fsynced, and renamed into place, then marked complete. A crashed conversion leaves only a
temporary directory, which the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from tunecraft import paths
from tunecraft.durable import atomic_dir
from tunecraft.errors import ModelNotFoundError

COMPLETE_MARKER = ".tunecraft-complete.json"
GGUF_MAGIC = b"GGUF"  # every GGUF file starts with these 4 bytes


def cache_key(gguf: Path, name: str | None = None) -> str:
    """Stable key for a GGUF file: its name plus size and mtime (cheap; no full hash of 100 MB)."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"{name or gguf.stem.lower()}-{digest}"


def is_complete(directory: Path) -> bool:
    """True once a conversion was renamed into place (the marker is written before the rename)."""
    return (directory / COMPLETE_MARKER).is_file() and (directory / "config.json").is_file()


def check_gguf(gguf: Path) -> None:
    """Refuse a file that is not GGUF before taking locks or importing transformers."""
    with open(gguf, "rb") as fh:
        magic = fh.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelNotFoundError(
            f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes). "
            "Pass a .gguf model file, a Hugging Face model directory, or a known model name."
        )




def _print_status(message: str) -> None:
    # Default progress goes to stderr so that `--json` output on stdout stays parseable.
    print(f"tunecraft: {message}", file=sys.stderr, flush=True)


def _convert_into(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are now plain float tensors; drop the GGUF quantization marker so that the
    # saved directory loads as an ordinary, trainable model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = gguf.stem
    eos_ids = {tid for tid in (tokenizer.eos_token_id, model.config.eos_token_id) if tid is not None}
    model.generation_config = GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=sorted(eos_ids) if len(eos_ids) > 1 else next(iter(eos_ids), None),
        pad_token_id=tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    )
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos:
        tokenizer.model_max_length = int(max_pos)
    model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))


def convert_gguf(
    gguf: Path,
    name: str | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Path:
    """Return the cached HF directory for `gguf`, converting it first if needed.

    `on_status` receives one-line progress messages (default: printed to stderr).
    """
    report = on_status or _print_status
    check_gguf(gguf)
    root = paths.models_dir()
    key = cache_key(gguf, name)
    final = root / key
    if is_complete(final):
        return final
    lock = FileLock(str(root / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report(f"waiting for another tunecraft process that is converting {gguf.name}")
        lock.acquire()
    try:
        if is_complete(final):  # another process finished while we waited
            return final
        _convert_locked(gguf, root, key, final, report)
    finally:
        lock.release()
    return final


def _convert_locked(
    gguf: Path, root: Path, key: str, final: Path, report: Callable[[str], None]
) -> None:
    """Convert into a temp dir and rename it into place; the caller holds the lock."""
    for stale in root.glob(f"{key}.tmp-*"):  # left by a crashed conversion
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # incomplete leftover of an older layout
        shutil.rmtree(final)
    report(f"converting {gguf.name} to a Hugging Face directory (once, ~20 s)")
    start = time.perf_counter()
    try:
        with atomic_dir(final) as tmp:  # Ctrl-C or a failure leaves no half-written directory
            _convert_into(gguf, tmp)
            (tmp / COMPLETE_MARKER).write_text(
                json.dumps({"source": str(gguf), "size": gguf.stat().st_size}), encoding="utf-8"
            )
    except Exception as exc:
        raise ModelNotFoundError(
            f"{gguf}: could not convert it to a Hugging Face model ({type(exc).__name__}: {exc}). "
            "transformers reads GGUF files of the architectures it supports (Llama, Mistral, "
            "Qwen2, ...); otherwise pass a Hugging Face directory with safetensors weights."
        ) from exc
    report(f"converted in {time.perf_counter() - start:.0f} s: {final}")
