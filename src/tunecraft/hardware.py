"""What this CPU offers, read from /proc/cpuinfo (no torch import: `doctor` works without it), and
how this process's memory allocator should treat freed memory."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
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


# glibc's mallopt parameters (malloc.h) and the values a tunecraft process sets.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP_FREED = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system.

    A CPU training step allocates and frees activations of a different size every micro-batch
    (packed rows have no fixed length). By default glibc serves blocks over 128 KiB-32 MiB with
    fresh `mmap`s and trims its heap whenever 128 KiB-64 MiB lie free at its top, so each step
    faults its working set back in page by page (the kernel zero-fills every 4 KiB page):
    ~8,000 page faults a LoRA step of the default model. With blocks up to 32 MiB served from
    the heap and up to 1 GiB of freed heap kept, the same steps fault ~half as often and ran
    0.95x the steps' time (docs/performance.md); `tunecraft eval`'s generation, 0.95x its wall
    time. Peak memory is unchanged: freed memory is reused, not added to. Set for every CLI
    command and by the training runtime (library use); a no-op (False) off Linux/glibc.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _KEEP_FREED)
