"""Where and how the run computes: device, dtype, threads, seeds, determinism, ranks.

`setup_runtime` takes the plan's resolved settings (nothing is chosen here) and returns a
`Runtime` that carries the run's `Distribution`: a no-op for one process, the process group
when torchrun launched several (`train.distributed`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import random
import sys
from dataclasses import dataclass
from typing import Any

import torch

from tunecraft.models.facts import pick_device
from tunecraft.train import distributed
from tunecraft.train.distributed import Distribution


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # compute dtype of the frozen/base weights
    threads: int
    dist: Distribution  # rank, world size and every cross-process operation

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def without_grad(self, method: str) -> contextlib.AbstractContextManager[Any]:
        """No autograd for a pass that trains nothing (evaluation, reference log-probs).

        Under bf16 autocast over fp32 weights this is `no_grad`, not `inference_mode`: autocast
        keeps a weight's bf16 cast for the whole pass only for tensors that require grad, which
        inference mode hides, so every micro-batch cast every weight again (300 BANKING77
        examples on the default model: 7.1 s under inference mode, 4.0 s under no_grad).
        """
        if method == "full" and self.dtype == torch.bfloat16:
            return torch.no_grad()
        return torch.inference_mode()


def local_world_size() -> int:
    """Processes that torchrun started on this machine (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# glibc's mallopt parameters (malloc.h) and the values a training process keeps.
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
    0.91x the whole-process wall time (README, Performance). Peak memory is unchanged: freed
    memory is reused, not added to. A no-op (False) off Linux/glibc.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in _KEEP_FREED)


def setup_runtime(precision: str, deterministic: bool, threads: int, sharding: str = "ddp") -> Runtime:
    """Device, dtype and threads as planned; joins the process group when launched by torchrun."""
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(threads)
        keep_freed_memory()
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return Runtime(device, dtype, threads, distributed.connect(device, sharding))
