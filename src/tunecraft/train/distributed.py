"""Multi-process training on torch.distributed, equivalent to one process with the same batch.

torchrun starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; this module
turns that into: a process group (gloo on CPU, nccl on CUDA) with a timeout, each rank's share
of every optimizer step, global sums of token counts and losses, gradient reduction, and the
full-tensor gathering that lets rank 0 alone write checkpoints and `model/`.

Two sharding modes (`train.sharding`):
- `ddp`: every rank holds the whole model. Gradients are summed over ranks with one manual
  all-reduce after the step's micro-batches (DDP-equivalent: same result as
  `DistributedDataParallel` with a SUM hook, without DDP's requirement that every rank run the
  same number of backward passes; ranks' shares of a step may differ by a micro-batch).
- `fsdp`: FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state per decoder
  layer; a small root module runs the whole loss so FSDP's hooks see every parameter use.

Without torchrun (no process group) every function here is the identity, so single-process
runs take exactly the code path they always took.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from tunecraft.data.batching import Batch
from tunecraft.data.render import IGNORE
from tunecraft.errors import TunecraftError

if TYPE_CHECKING:
    from tunecraft.train.plan import Plan
    from tunecraft.train.runtime import Runtime

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800  # a collective that waits longer means a rank is stuck: fail, don't hang
BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in flat buckets of at most 16M elements

# FSDP's root module for each sharded model (the loop keeps handling the plain model).
_FSDP_ROOTS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- process group


def launched_by_torchrun() -> bool:
    """torchrun (and any launcher speaking its protocol) sets these for every worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def timeout_s() -> int:
    return int(os.environ.get("TUNECRAFT_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S)))


def init(device: torch.device) -> None:
    """Join the process group when launched by torchrun (a no-op otherwise, or if joined)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl binds each rank to its own GPU
    dist.init_process_group(
        backend=backend,
        timeout=dt.timedelta(seconds=timeout_s()),
        device_id=device if device.type == "cuda" else None,
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized()


def _device(rt: Runtime) -> torch.device:
    # nccl only moves CUDA tensors; gloo moves CPU ones.
    return rt.device if rt.device.type == "cuda" else torch.device("cpu")


# ----------------------------------------------------------------------------- data and sums


def shard(indices: list[int], rt: Runtime) -> list[int]:
    """This rank's share of a step's examples: every world_size-th, starting at its rank.

    Every rank computes the same step plan from the seed, so the union of the shards is the
    single-process batch, in a deterministic order.
    """
    return indices[rt.rank :: rt.world_size] if active() else indices


def all_sum(values: list[float], rt: Runtime) -> list[float]:
    """Element-wise sums over ranks (float64: token counts stay exact up to 2**53)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device(rt))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank when it is true on one (e.g. a stop signal reached only one rank)."""
    return all_sum([1.0 if flag else 0.0], rt)[0] > 0


def broadcast_text(text: str, rt: Runtime) -> str:
    """Rank 0's string on every rank (bytes in a tensor: nothing is pickled)."""
    if not active():
        return text
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8) if rt.is_main else None
    size = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64, device=_device(rt))
    dist.broadcast(size, src=0)
    buf = data.to(_device(rt)) if data is not None else torch.empty(int(size), dtype=torch.uint8, device=_device(rt))
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode("utf-8")


def on_main(fn: Callable[[], T], rt: Runtime) -> T | None:
    """Run `fn` on rank 0 only; if it fails there, every rank fails instead of waiting forever.

    Rank 0 re-raises its own error (the message users see); the others raise a short one.
    """
    if not active():
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if rt.is_main:
        try:
            result = fn()
        except Exception as exc:  # reported below, after the others learned of it
            error = exc
    if any_rank(error is not None, rt):
        if error is not None:
            raise error
        raise TunecraftError(f"rank {rt.rank}: stopping because rank 0 failed (its error is above)")
    return result


# ----------------------------------------------------------------------------- model


def is_fsdp(model: torch.nn.Module) -> bool:
    return model in _FSDP_ROOTS


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


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a decoder: the longest ModuleList in the model (one FSDP unit each)."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


def prepare_model(model: torch.nn.Module, sharding: str, rt: Runtime) -> torch.nn.Module:
    """Make the replicas start equal (ddp) or shard the model (fsdp); returns the same model."""
    if not active():
        return model
    if sharding == "fsdp":
        _shard_fsdp(model, rt)
    else:
        broadcast_trainable(model, rt)
    return model


def broadcast_trainable(model: torch.nn.Module, rt: Runtime) -> None:
    """Rank 0's trainable weights on every rank (as DDP does at construction): every rank loads
    and seeds identically, but a replica that starts different would silently diverge."""
    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)


def _shard_fsdp(model: torch.nn.Module, rt: Runtime) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in model.parameters()}
    # FSDP all-gathers one flat buffer per unit: mixed dtypes (LoRA: bf16 base, fp32 adapters)
    # need one gather dtype; gradients are still reduced in fp32.
    mp = MixedPrecisionPolicy(param_dtype=rt.dtype, reduce_dtype=torch.float32) if len(dtypes) > 1 else MixedPrecisionPolicy()
    units = [fully_shard(layer, mp_policy=mp) for layer in decoder_layers(model)]
    root = _LossRoot(model)
    units.append(fully_shard(root, mp_policy=mp))
    for unit in units:
        # The loss is already divided by the global token count: gradients must be summed
        # over ranks, not averaged (FSDP divides by the world size by default). Plain SUM
        # collectives also work on gloo, which lacks NCCL's pre-multiplied sum.
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    _FSDP_ROOTS[model] = root


def loss(
    model: torch.nn.Module, batch: Batch, engine: str, compute: Callable[..., Any], with_accuracy: bool = False
) -> Any:
    """`compute(model, batch, engine, with_accuracy)`, through FSDP's root when sharded."""
    root = _FSDP_ROOTS.get(model)
    if root is None:
        return compute(model, batch, engine, with_accuracy)
    return root(batch, engine, with_accuracy, compute)


def filler_batch(device: torch.device) -> Batch:
    """Two tokens bearing no loss: run by a rank that has fewer micro-batches than another."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    labels = torch.full((1, 2), IGNORE, dtype=torch.long, device=device)
    positions = torch.arange(2, device=device).unsqueeze(0)
    return Batch(ids, labels, positions, torch.ones_like(ids), 0, 0)


def even_out(model: torch.nn.Module, batches: list[Batch], rt: Runtime) -> list[Batch]:
    """Pad this rank's micro-batches with fillers to the largest count of any rank (fsdp only).

    FSDP gathers parameters in every forward, a collective that every rank must join, so all
    ranks run the same number of micro-batches; ddp needs no padding (one all-reduce per step).
    """
    if not is_fsdp(model):
        return batches
    most = _max_count(len(batches), rt)
    return batches + [filler_batch(rt.device) for _ in range(most - len(batches))]


def _max_count(n: int, rt: Runtime) -> int:
    t = torch.tensor([n], dtype=torch.int64, device=_device(rt))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


# ----------------------------------------------------------------------------- gradients


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def reduce_gradients(model: torch.nn.Module, rt: Runtime) -> None:
    """ddp: sum every trainable gradient over ranks, once per step after accumulation.

    Each micro-batch's loss was divided by the *global* loss-bearing token count, so the sum
    over ranks is exactly the single-process gradient (DDP would average: a factor 1/world
    off). A rank that ran no micro-batch contributes zeros. fsdp reduced during backward.
    """
    if not active() or is_fsdp(model):
        return
    params = _trainable(model)
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


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip to the global norm; returns it. After `reduce_gradients` every rank holds the
    global gradient (ddp); sharded gradients (fsdp) give a DTensor norm over all shards."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# ----------------------------------------------------------------------------- saving


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


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    state: dict[str, Any], keep: int, protect: set[int], rt: Runtime,
) -> Path | None:
    """Rank 0 writes the checkpoint (fsdp: from tensors every rank helped gather)."""
    from tunecraft.train import checkpoint as ckpt

    trainable = optimizer_state = None
    if is_fsdp(model):
        trainable, optimizer_state = full_trainable_state(model), full_optimizer_state(optimizer)
    return on_main(
        lambda: ckpt.save_checkpoint(
            root, step, model, optimizer, state, keep, protect, trainable=trainable, optimizer_state=optimizer_state
        ),
        rt,
    )


def save_model(model: torch.nn.Module, tokenizer: Any, out: Path, method: str, rt: Runtime) -> None:
    """Rank 0 writes `model/` (fsdp: from the state dict gathered to it)."""
    from tunecraft.train.deliver import save_deliverable

    state = full_model_state(model) if is_fsdp(model) else None
    on_main(lambda: save_deliverable(model, tokenizer, out, method, state_dict=state), rt)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Every rank reads the same checkpoint (the run directory must be visible to all ranks)."""
    from tunecraft.train import checkpoint as ckpt

    if not is_fsdp(model):
        return ckpt.load_checkpoint(path, model, optimizer)
    return ckpt.load_checkpoint(
        path, model, optimizer, load_weights=load_full_trainable,
        adapt_optimizer_state=lambda sd: shard_optimizer_state(optimizer, sd),
    )


def agree_run_dir(plan: Plan, rt: Runtime) -> None:
    """Every rank uses rank 0's run directory (a default one is named after the start time,
    which may differ by a second between ranks)."""
    if active():
        plan.run_dir = Path(broadcast_text(str(plan.run_dir), rt))
        plan.cfg.train.out = str(plan.run_dir)
