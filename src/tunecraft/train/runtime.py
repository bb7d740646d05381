"""Where and how the run computes: device, dtype, threads, seeds, determinism, ranks."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from tunecraft.hardware import has_fast_bf16, usable_physical_cores


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # compute dtype of the frozen/base weights
    threads: int
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def pick_dtype(precision: str, device: torch.device, deterministic: bool) -> torch.dtype:
    if deterministic or precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if has_fast_bf16() else torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def setup_runtime(precision: str, deterministic: bool, threads: int | None) -> Runtime:
    """Device, dtype and threads; joins the process group when launched by torchrun."""
    from tunecraft.train import distributed

    device = pick_device()
    # N processes on one machine share its cores: one thread each per physical core.
    n_threads = threads or max(1, usable_physical_cores() // distributed.local_world_size())
    if device.type == "cpu":
        torch.set_num_threads(n_threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    distributed.init(device)
    return Runtime(device, pick_dtype(precision, device, deterministic), n_threads, rank, world, local)
