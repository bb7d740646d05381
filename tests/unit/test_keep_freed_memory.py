"""tunecraft processes keep freed memory for reuse (`hardware.keep_freed_memory`): the CLI for every
command, the training runtime for library use."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Sets a fresh process up as `mode` says, allocates a 30 MiB tensor (the size of a step's larger
# activations) and frees it, and prints what glibc's `mallinfo2` says: whether the block was a
# fresh `mmap` (handed back to the system when freed, faulted in again page by page next time)
# and how much freed memory the heap holds for reuse afterwards.
PROBE = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
mode = sys.argv[1]
if mode == "imports":
    import tunecraft.cli, tunecraft.train.runtime
elif mode == "runtime":
    from tunecraft.train.runtime import setup_runtime
    setup_runtime("fp32", False, 1)
elif mode == "cli":
    from tunecraft import cli
    sys.argv = ["tunecraft", "--help"]
    try:
        cli.main()
    except SystemExit:
        pass
before = libc.mallinfo2()
x = torch.ones(30 << 18)
during = libc.mallinfo2()
del x
print(during.hblkhd - before.hblkhd, libc.mallinfo2().fordblks)
"""

MIB = 1 << 20


def _probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    mapped, free = out.stdout.split()[-2:]
    return int(mapped), int(free)


@pytest.mark.parametrize("mode", ["runtime", "cli"])
def test_freed_tensors_stay_in_the_heap_for_reuse(mode: str) -> None:
    mapped, free = _probe(mode)
    assert mapped == 0  # served from the heap, not a fresh mmap
    assert free >= 30 * MIB  # and kept there once freed


def test_by_default_the_block_is_mapped_and_handed_back() -> None:
    """What the settings change: importing tunecraft alone leaves glibc's defaults in place."""
    mapped, free = _probe("imports")
    assert mapped >= 30 * MIB and free < 30 * MIB
