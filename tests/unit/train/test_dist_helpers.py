"""The launcher's command line and the single-process identity of the distributed helpers."""

from __future__ import annotations

import sys

import torch

from tunecraft.train import distributed
from tunecraft.train.launch import launcher_args, strip_launcher_flags, torchrun_command


def test_launcher_flags_go_to_torchrun_and_the_rest_to_each_worker() -> None:
    argv = ["train", "cfg.yaml", "--nproc-per-node", "2", "--data", "d.jsonl", "--nnodes=2",
            "--rdzv_endpoint", "host:29400", "--master-port", "29501", "train.lr=1e-4", "--sharding", "fsdp"]
    assert strip_launcher_flags(argv) == ["train", "cfg.yaml", "--data", "d.jsonl", "train.lr=1e-4", "--sharding", "fsdp"]
    launcher = launcher_args({"--nproc-per-node": "2", "--nnodes": None, "--master-port": 29501})
    assert launcher == ["--nproc-per-node", "2", "--master-port", "29501"]
    cmd = torchrun_command(launcher, ["train", "--data", "d.jsonl"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "tunecraft", "train", "--data", "d.jsonl"]


def test_without_torchrun_the_distribution_is_the_single_process(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    one = distributed.connect(torch.device("cpu"), "fsdp")
    assert type(one) is distributed.SingleProcess
    assert (one.rank, one.world_size, one.is_main) == (0, 1, True)
    assert one.share([5, 3, 8]) == [5, 3, 8]
    assert one.sum([1.5, 2.0]) == [1.5, 2.0]
    assert one.agree("runs/x") == "runs/x"
    assert one.on_main(lambda: 7) == 7
    model = torch.nn.Linear(2, 2)
    assert one.prepare(model, torch.float32) is model
    batches: list = [object(), object()]
    assert one.micro_batches(batches) is batches  # no fillers with one process


def test_gradient_buckets_split_by_dtype_and_size(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "BUCKET_ELEMENTS", 10)
    params = [torch.nn.Parameter(torch.zeros(n, dtype=d)) for n, d in
              [(4, torch.float32), (4, torch.float32), (4, torch.float32), (2, torch.bfloat16)]]
    sizes = [[p.numel() for p in b] for b in distributed._buckets(params)]
    assert sizes == [[4, 4], [4], [2]]
