"""What this CPU offers, read from /proc/cpuinfo (no torch import: `doctor` works without it)."""

from __future__ import annotations

import os
from pathlib import Path

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matmuls several times faster than fp32


def _cpuinfo_blocks() -> list[dict[str, str]]:
    """One dict per processor block of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks = []
    for block in text.strip().split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in block.splitlines())}
        blocks.append(fields)
    return blocks


def cpu_info() -> dict[str, str]:
    """The first processor's fields (model name, flags, ...)."""
    blocks = _cpuinfo_blocks()
    return blocks[0] if blocks else {}


def cpu_flags() -> set[str]:
    return set(cpu_info().get("flags", "").split())


def has_fast_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in FAST_BF16_FLAGS)


def physical_cores() -> int | None:
    """Distinct (socket, core) pairs; None where /proc/cpuinfo does not say."""
    cores = {(b.get("physical id", "0"), b["core id"]) for b in _cpuinfo_blocks() if "core id" in b}
    return len(cores) or None


def usable_physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's matmul units)."""
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    physical = physical_cores()
    if physical is None:
        return max(1, usable)
    siblings = max(1.0, logical / physical)
    return max(1, int(usable / siblings))
