"""The launcher's command line and the single-process identity of the distributed helpers."""

from __future__ import annotations

import sys

import torch

from tunecraft.train import distributed
from tunecraft.train.launch import launcher_args, strip_launcher_flags, torchrun_command
from tunecraft.train.runtime import Runtime


def test_launcher_flags_go_to_torchrun_and_the_rest_to_each_worker() -> None:
    argv = ["train", "cfg.yaml", "--nproc-per-node", "2", "--data", "d.jsonl", "--nnodes=2",
            "--rdzv_endpoint", "host:29400", "--master-port", "29501", "train.lr=1e-4", "--sharding", "fsdp"]
    assert strip_launcher_flags(argv) == ["train", "cfg.yaml", "--data", "d.jsonl", "train.lr=1e-4", "--sharding", "fsdp"]
    launcher = launcher_args({"--nproc-per-node": "2", "--nnodes": None, "--master-port": 29501})
    assert launcher == ["--nproc-per-node", "2", "--master-port", "29501"]
    cmd = torchrun_command(launcher, ["train", "--data", "d.jsonl"])
    assert cmd == [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "tunecraft", "train", "--data", "d.jsonl"]


def test_without_a_process_group_everything_is_the_identity() -> None:
    rt = Runtime(torch.device("cpu"), torch.float32, 1)
    assert not distributed.active()
    assert distributed.shard([5, 3, 8], rt) == [5, 3, 8]
    assert distributed.all_sum([1.5, 2.0], rt) == [1.5, 2.0]
    assert distributed.broadcast_text("runs/x", rt) == "runs/x"
    assert distributed.on_main(lambda: 7, rt) == 7


def test_gradient_buckets_split_by_dtype_and_size(monkeypatch) -> None:
    monkeypatch.setattr(distributed, "BUCKET_ELEMENTS", 10)
    params = [torch.nn.Parameter(torch.zeros(n, dtype=d)) for n, d in
              [(4, torch.float32), (4, torch.float32), (4, torch.float32), (2, torch.bfloat16)]]
    sizes = [[p.numel() for p in b] for b in distributed._buckets(params)]
    assert sizes == [[4, 4], [4], [2]]
