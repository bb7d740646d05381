"""A training process keeps freed memory for reuse (`train.runtime.keep_freed_memory`)."""

from __future__ import annotations

import subprocess
import sys

# Allocates and frees tensors of 1-30 MiB in a changing mix, like a step's activations for
# packed rows of changing length, and prints the page faults that took; "runtime" first sets
# up the training runtime as a CPU run does.
CHURN = """
import resource, sys, torch
from tunecraft.train.runtime import setup_runtime
if sys.argv[1] == "runtime":
    setup_runtime("fp32", False, 1)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(40):
    xs = [torch.ones((1 + (i * 7 + j * 13) % 30) << 18) for j in range(6)]
    del xs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_a_cpu_training_runtime_reuses_freed_activations() -> None:
    # By default glibc returns blocks this size to the system when freed, so every new
    # allocation faults its pages in again (~0.7M faults here); kept, they are reused.
    default, kept = _faults("default"), _faults("runtime")
    assert kept * 10 < default, (kept, default)
