"""Multi-process training on torch.distributed, equivalent to one process with the same batch.

The loop talks to a `Distribution`: `SingleProcess` when one process trains (every method is
the plain single-process operation, readable on its own), `ProcessGroup` when torchrun started
several. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK for every worker; `connect` then joins a
process group (gloo on CPU, nccl on CUDA) with a timeout. Each rank takes its share of every
optimizer step, token counts and losses are summed globally, gradients are reduced, and rank 0
alone writes checkpoints and `model/` (from tensors every rank helped gather).

Two sharding modes (`train.sharding`):
- `ddp`: every rank holds the whole model. Gradients are summed over ranks with one manual
  all-reduce after the step's micro-batches (DDP-equivalent: same result as
  `DistributedDataParallel` with a SUM hook, without DDP's requirement that every rank run the
  same number of backward passes; ranks' shares of a step may differ by a micro-batch).
- `fsdp`: FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state per decoder
  layer; a small root module runs the whole loss so FSDP's hooks see every parameter use.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tunecraft.data.batching import Batch
from tunecraft.data.render import IGNORE
from tunecraft.errors import TunecraftError
from tunecraft.models.facts import decoder_layers
from tunecraft.train import checkpoint as ckpt
from tunecraft.train.deliver import snapshot_deliverable
from tunecraft.train.loss import LossOut, compute_loss

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800  # a collective that waits longer means a rank is stuck: fail, don't hang
BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in flat buckets of at most 16M elements


# ----------------------------------------------------------------------------- one process


class SingleProcess:
    """One process trains: each operation is the plain single-process one."""

    rank = 0
    world_size = 1
    is_main = True

    def share(self, indices: list[int]) -> list[int]:
        """This process's examples of a step: all of them."""
        return indices

    def sum(self, values: list[float]) -> list[float]:
        return list(values)

    def agree(self, text: str) -> str:
        return text

    def on_main(self, fn: Callable[[], T]) -> T | None:
        return fn()

    def prepare(self, model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        return model

    def micro_batches(self, batches: list[Batch]) -> list[Batch]:
        return batches

    def loss(self, model: torch.nn.Module, batch: Batch, engine: str, with_accuracy: bool = False,
             compute: Callable[..., Any] | None = None) -> LossOut:
        """`compute(model, batch, engine, with_accuracy)` (default: the masked cross-entropy)."""
        return (compute or compute_loss)(model, batch, engine, with_accuracy)

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Nothing to sum: the gradients are already the whole batch's."""

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float | None) -> float:
        """Clip to the global norm (none: measure only); returns it."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf))

    def snapshot_checkpoint(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
        copy: bool = True,
    ) -> ckpt.Snapshot | None:
        """What checkpoint `step` holds, for the writer thread (None: not this rank's to write):
        a copy, unless `copy=False` (training has ended, the live tensors stay as they are)."""
        return ckpt.snapshot(step, model, optimizer, state, copy=copy)

    def snapshot_model(self, model: torch.nn.Module, method: str, copy: bool = True) -> dict[str, torch.Tensor] | None:
        """What `model/` holds now, a copy unless `copy=False` (None: not this rank's to write)."""
        return snapshot_deliverable(model, method, copy=copy)

    def load_checkpoint(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return ckpt.load_checkpoint(path, model, optimizer)

    def shutdown(self) -> None:
        """Nothing to leave."""


Distribution = SingleProcess  # ProcessGroup below has the same methods


# ----------------------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    """torchrun (and any launcher speaking its protocol) sets these for every worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_s() -> int:
    return int(os.environ.get("TUNECRAFT_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S)))


def connect(device: torch.device, sharding: str = "ddp") -> Distribution:
    """The run's distribution: a process group under torchrun, else the single process."""
    if not launched_by_torchrun():
        return SingleProcess()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl binds each rank to its own GPU
        dist.init_process_group(
            backend=backend,
            timeout=dt.timedelta(seconds=timeout_s()),
            device_id=device if device.type == "cuda" else None,
        )
    return ProcessGroup(device, sharding)


class ProcessGroup(SingleProcess):
    """Several processes (torchrun): the same operations, made global over the process group."""

    def __init__(self, device: torch.device, sharding: str) -> None:
        self.device = device
        # nccl only moves CUDA tensors; gloo moves CPU ones.
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")
        self.sharding = sharding
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.root: torch.nn.Module | None = None  # fsdp: the loss root that holds the shards

    @property
    def sharded(self) -> bool:
        return self.root is not None

    # -- data and sums

    def share(self, indices: list[int]) -> list[int]:
        """Every world_size-th example, starting at this rank. Every rank computes the same step
        plan from the seed, so the union of the shares is the single-process batch."""
        return indices[self.rank :: self.world_size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64: token counts stay exact up to 2**53)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def agree(self, text: str) -> str:
        """Rank 0's string on every rank (bytes in a tensor: nothing is pickled)."""
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8) if self.is_main else None
        size = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(size, src=0)
        buf = data.to(self.comm_device) if data is not None else torch.empty(int(size), dtype=torch.uint8, device=self.comm_device)
        dist.broadcast(buf, src=0)
        return bytes(buf.cpu().tolist()).decode("utf-8")

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; if it fails there, every rank fails instead of waiting forever.

        Rank 0 re-raises its own error (the message users see); the others raise a short one.
        """
        result: T | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # reported below, after the others learned of it
                error = exc
        if self.sum([1.0 if error is not None else 0.0])[0] > 0:
            if error is not None:
                raise error
            raise TunecraftError(f"rank {self.rank}: stopping because rank 0 failed (its error is above)")
        return result

    # -- model

    def prepare(self, model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """Shard the model (fsdp) or make the replicas start equal (ddp); the same model back."""
        if self.sharding == "fsdp":
            self.root = _shard_fsdp(model, dtype)
        else:
            # Rank 0's trainable weights on every rank (as DDP does at construction): every rank
            # loads and seeds identically, but a replica that starts different would silently diverge.
            for p in model.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, src=0)
        return model

    def micro_batches(self, batches: list[Batch]) -> list[Batch]:
        """fsdp: pad this rank's micro-batches with fillers to the largest count of any rank.

        FSDP gathers parameters in every forward, a collective that every rank must join, so all
        ranks run the same number of micro-batches; ddp needs no padding (one all-reduce per step).
        """
        if not self.sharded:
            return batches
        t = torch.tensor([len(batches)], dtype=torch.int64, device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return batches + [filler_batch(self.device) for _ in range(int(t.item()) - len(batches))]

    def loss(self, model: torch.nn.Module, batch: Batch, engine: str, with_accuracy: bool = False,
             compute: Callable[..., Any] | None = None) -> LossOut:
        """The micro-batch's loss, through FSDP's root when sharded (so its hooks see every use)."""
        if self.root is None:
            return (compute or compute_loss)(model, batch, engine, with_accuracy)
        return self.root(batch, engine, with_accuracy, compute or compute_loss)

    # -- gradients

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """ddp: sum every trainable gradient over ranks, once per step after accumulation.

        Each micro-batch's loss was divided by the *global* loss-bearing token count, so the sum
        over ranks is exactly the single-process gradient (DDP would average: a factor 1/world
        off). A rank that ran no micro-batch contributes zeros. fsdp reduced during backward.
        """
        if self.sharded:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(params):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # type: ignore[union-attr]
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            at = 0
            for p in bucket:
                n = p.numel()
                p.grad.copy_(flat[at : at + n].view_as(p))  # type: ignore[union-attr]
                at += n

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float | None) -> float:
        """After `reduce_gradients` every rank holds the global gradient (ddp); sharded
        gradients (fsdp) give a DTensor norm over all shards."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # -- saving

    def snapshot_checkpoint(
        self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
        copy: bool = True,
    ) -> ckpt.Snapshot | None:
        """Rank 0's checkpoint `step` (fsdp: from tensors every rank helped gather); see SingleProcess."""
        trainable = optimizer_state = None
        if self.sharded:
            trainable, optimizer_state = full_trainable_state(model), full_optimizer_state(optimizer)
        if not self.is_main:
            return None
        return ckpt.snapshot(step, model, optimizer, state, trainable, optimizer_state, copy=copy)

    def snapshot_model(self, model: torch.nn.Module, method: str, copy: bool = True) -> dict[str, torch.Tensor] | None:
        """Rank 0's `model/` (fsdp: the state dict gathered to it; already a copy)."""
        if self.sharded:
            return full_model_state(model)
        return snapshot_deliverable(model, method, copy=copy) if self.is_main else None

    def load_checkpoint(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every rank reads the same checkpoint (the run directory must be visible to all ranks)."""
        if not self.sharded:
            return ckpt.load_checkpoint(path, model, optimizer)
        return ckpt.load_checkpoint(
            path, model, optimizer, load_weights=load_full_trainable,
            adapt_optimizer_state=lambda sd: shard_optimizer_state(optimizer, sd),
        )

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- fsdp pieces


class _LossRoot(torch.nn.Module):
    """FSDP's root: its forward computes one micro-batch's loss on the wrapped model.

    The fast loss path calls the decoder and reads the LM head's weight directly, so the
    model's own forward never runs; FSDP gathers a module's parameters only around that
    module's forward, hence a root whose forward covers the whole loss computation.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, engine: str, with_accuracy: bool, compute: Callable[..., Any]) -> Any:
        if batch.n_loss == 0:
            # A filler (see `even_out`): the reference path keeps the (zero) loss attached to
            # every parameter, so this rank joins each of FSDP's gradient reductions.
            engine = "reference"
        return compute(self.model, batch, engine, with_accuracy)


def _shard_fsdp(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Shard each decoder layer and a loss root over them (FSDP2); returns the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in model.parameters()}
    # FSDP all-gathers one flat buffer per unit: mixed dtypes (LoRA: bf16 base, fp32 adapters)
    # need one gather dtype; gradients are still reduced in fp32.
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if len(dtypes) > 1 else MixedPrecisionPolicy()
    units = [fully_shard(layer, mp_policy=mp) for layer in decoder_layers(model)]
    root = _LossRoot(model)
    units.append(fully_shard(root, mp_policy=mp))
    for unit in units:
        # The loss is already divided by the global token count: gradients must be summed
        # over ranks, not averaged (FSDP divides by the world size by default). Plain SUM
        # collectives also work on gloo, which lacks NCCL's pre-multiplied sum.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return root


def filler_batch(device: torch.device) -> Batch:
    """Two tokens bearing no loss: run by a rank that has fewer micro-batches than another."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    labels = torch.full((1, 2), IGNORE, dtype=torch.long, device=device)
    positions = torch.arange(2, device=device).unsqueeze(0)
    return Batch(ids, labels, positions, torch.ones_like(ids), 0, 0)


def _buckets(params: list[torch.nn.Parameter]) -> Iterable[list[torch.nn.Parameter]]:
    """Consecutive runs of same-dtype, same-device parameters, at most BUCKET_ELEMENTS each."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (size + p.numel() > BUCKET_ELEMENTS or (p.dtype, p.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def full_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """fsdp: the trainable parameters gathered whole (every rank joins; rank 0 gets them)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = full.detach().to("cpu", torch.float32).contiguous()
    return out if dist.get_rank() == 0 else None


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """fsdp: the whole state dict gathered to rank 0's CPU (for `model/`); None elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    # Gathering copies tied parameters (embeddings = LM head) apart; share them again so that
    # save_pretrained recognizes the tie and writes the tensor once, as one process would.
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first and name in sd and first[id(p)] in sd:
            sd[name] = sd[first[id(p)]]
        first.setdefault(id(p), name)
    return sd


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """fsdp: the optimizer's state_dict with sharded tensors gathered whole (index-keyed, as
    one process would write it, so the checkpoint resumes at any world size)."""
    sd = optimizer.state_dict()
    state = {
        idx: {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in entry.items()}
        for idx, entry in sd["state"].items()
    }
    return {"state": state, "param_groups": sd["param_groups"]} if dist.get_rank() == 0 else None


def load_full_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """fsdp: copy whole tensors into sharded parameters (each rank keeps its shard)."""
    from torch.distributed.tensor import distribute_tensor

    params = dict(model.named_parameters())
    ckpt.check_fits(params, tensors)  # a sharded parameter's shape is its whole shape
    with torch.no_grad():
        for name, value in tensors.items():
            p = params[name]
            local = value.to(p.device, p.dtype)
            if hasattr(p, "device_mesh"):
                local = distribute_tensor(local, p.device_mesh, p.placements)  # type: ignore[attr-defined]
            p.copy_(local)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """fsdp: turn a whole-tensor optimizer state_dict into one matching sharded parameters."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        p = params[int(idx)]
        state[int(idx)] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)  # type: ignore[attr-defined]
            if torch.is_tensor(v) and hasattr(p, "device_mesh") and v.shape == p.shape
            else v
            for k, v in entry.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}
