"""A training process keeps freed memory for reuse (`train.runtime.keep_freed_memory`)."""

from __future__ import annotations

import subprocess
import sys

# Allocates and frees tensors of 1-30 MiB in a changing mix, like a step's activations for
# packed rows of changing length (~3.5 GiB over the 40 rounds after a 5-round warm-up), and
# prints the page faults the 40 rounds took; "runtime" first sets up the training runtime as a
# CPU run does.
CHURN = """
import resource, sys, torch
from tunecraft.train.runtime import setup_runtime
if sys.argv[1] == "runtime":
    setup_runtime("fp32", False, 1)
for i in range(45):
    if i == 5:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones((1 + (i * 7 + j * 13) % 30) << 18) for j in range(6)]
    del xs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_a_cpu_training_runtime_reuses_freed_activations() -> None:
    # Kept, the freed blocks are reused: ~3,000 faults (12 MiB) here. By default glibc hands
    # blocks this size back to the system and every new one faults its pages in again: 694,272
    # faults in most runs on the 2-core AMD EPYC, fewer (~90,000) when its heap happens to hold.
    assert _faults("runtime") < 10_000
