"""The README's file map stays true: every source file listed, no row naming a file that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _map_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## File map", 1)[1]
    paths: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            paths += re.findall(r"`([^`]+)`", line.split("|")[1])
    return paths


def test_every_source_file_is_in_the_file_map() -> None:
    listed = set(_map_rows())
    globbed = {str(p.relative_to(ROOT)) for entry in listed if "*" in entry for p in ROOT.glob(entry)}
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "src" / "tunecraft").rglob("*.py"))
               if str(p.relative_to(ROOT)) not in listed | globbed]
    assert not missing, "add to README's file map: " + ", ".join(missing)


def test_every_file_map_row_exists() -> None:
    stale = []
    for entry in _map_rows():
        if "*" in entry:
            if not list(ROOT.glob(entry.replace("**", "*"))) and not list(ROOT.glob(entry)):
                stale.append(entry)
        elif not (ROOT / entry).exists():
            stale.append(entry)
    assert not stale, "README's file map names missing files: " + ", ".join(stale)
