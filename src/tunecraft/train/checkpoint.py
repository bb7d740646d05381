"""Atomic, resumable training checkpoints in safetensors + JSON (never pickle).

A checkpoint directory `checkpoints/step-000120/` holds:
- `trainable.safetensors`: the trainable parameters (LoRA weights, or the whole model), fp32;
- `optimizer.safetensors` + `optimizer.json`: AdamW's state tensors and its param groups;
- `rng.safetensors`: torch CPU (and CUDA) generator states;
- `state.json`: step, best validation loss and step, patience, the LR schedule position,
  and python's `random` state; `COMPLETE` is written last.

It is written through `durable.atomic_dir` (a temp directory, every file fsynced, then swapped
in whole): a crash leaves either a complete checkpoint or a temp directory that is ignored and
removed before the next save; re-saving a step keeps the old copy until the new one is in place.
Which checkpoints are complete is the run directory's contract (`rundir.complete_checkpoints`).

Reading is separate from applying: `read_checkpoint` parses every file (a torn or corrupt one
raises `UnreadableCheckpoint`, and resume falls back to an older checkpoint), and applying
refuses tensors that do not fit the model (`CheckpointMismatch`) instead of broadcasting them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunecraft import rundir
from tunecraft.durable import atomic_dir, recover_children, remove_dir
from tunecraft.errors import TunecraftError
from tunecraft.rundir import COMPLETE

_JSON_ALLOWANCE = 1 << 16  # bytes for the JSON files and COMPLETE, in the size estimate


class UnreadableCheckpoint(TunecraftError):
    """A checkpoint whose files are torn or corrupt (resume falls back to an older one)."""


class CheckpointMismatch(TunecraftError):
    """A readable checkpoint whose tensors do not fit the model being resumed."""


@dataclass
class CheckpointFiles:
    """Everything a checkpoint directory holds, parsed (nothing applied yet)."""

    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, as contiguous fp32 CPU tensors."""
    return {
        name: p.detach().to("cpu", torch.float32).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _refit_hint() -> str:
    return ("the run's config.yaml or its base model changed since the checkpoint was saved: "
            "restore them, or start a new run with another --out")


def check_fits(params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors that do not match the trainable parameters name for name, shape for shape.

    `copy_` would broadcast a (1, H) tensor into an (N, H) parameter without a word.
    """
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    wrong = [f"{n}: {tuple(t.shape)} in the checkpoint, {tuple(params[n].shape)} in the model"
             for n, t in tensors.items() if n in params and tuple(t.shape) != tuple(params[n].shape)]
    problems = [f"missing {', '.join(missing[:3])}" if missing else "",
                f"not in the model {', '.join(unknown[:3])}" if unknown else "",
                f"shape of {'; '.join(wrong[:3])}" if wrong else ""]
    found = [p for p in problems if p]
    if found:
        raise CheckpointMismatch(f"the checkpoint does not fit this model ({'; '.join(found)}): "
                                 f"{_refit_hint()}")


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    check_fits(params, tensors)
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def _optimizer_from_files(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    _check_optimizer_fits(optimizer, state)
    sd = {"state": state, "param_groups": meta["param_groups"]}
    try:
        optimizer.load_state_dict(adapt(sd) if adapt is not None else sd)
    except ValueError as exc:  # torch's "parameter group that doesn't match the size ..."
        raise CheckpointMismatch(f"the optimizer state does not fit this model ({exc}): "
                                 f"{_refit_hint()}") from exc


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, state: dict[int, dict[str, Any]]) -> None:
    """Moment tensors must have their parameter's shape (the step counter is a scalar)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in state.items():
        if idx >= len(params):
            raise CheckpointMismatch(f"the optimizer state has parameter {idx} but the model has "
                                     f"{len(params)}: {_refit_hint()}")
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and tuple(value.shape) != tuple(params[idx].shape):
                raise CheckpointMismatch(
                    f"optimizer {key} of parameter {idx} has shape {tuple(value.shape)}, the "
                    f"parameter {tuple(params[idx].shape)}: {_refit_hint()}")


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda_{i}"] = s
    return out


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)


@dataclass
class Snapshot:
    """What one checkpoint writes, taken at a step boundary (copies, when written in the background)."""

    step: int
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    optimizer_meta: dict[str, Any]
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]  # state.json: the loop's state, the step and python's random state

    @property
    def nbytes(self) -> int:
        return _nbytes(self.weights.values()) + _nbytes(self.optimizer.values()) + _nbytes(self.rng.values())


def snapshot(
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    trainable: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    copy: bool = False,
) -> Snapshot:
    """The checkpoint of `step`; `copy` makes it independent of the live tensors, so that it can
    be written while training goes on (on CPU, `.cpu()` would return the very tensors the next
    step updates in place)."""
    weights = trainable if trainable is not None else trainable_state(model)
    opt_tensors, opt_meta = _optimizer_to_files(
        optimizer_state if optimizer_state is not None else optimizer.state_dict()
    )
    if copy:
        weights = {k: v.clone() for k, v in weights.items()}
        opt_tensors = {k: v.clone() for k, v in opt_tensors.items()}
        opt_meta = json.loads(json.dumps(opt_meta))
    full_state = {**state, "step": step, "py_random": _py_random_state()}
    return Snapshot(step, weights, opt_tensors, opt_meta, _rng_tensors(), full_state)


def write_checkpoint(root: Path, snap: Snapshot, keep: int, protect: set[int] | None = None,
                     same_weights: Path | None = None) -> Path:
    """Write `snap` atomically as `root/step-N`; prune old ones but keep the newest `keep` and `protect`.

    Leftovers of a crashed save are cleared first (they may be what filled the disk); a full
    disk raises `durable.DiskFullError` with the size needed, and the older checkpoints stay.
    `same_weights`: a durable safetensors file that may already hold exactly `snap.weights`
    (`model/` written from the same tensors at the run's end); then it is hard-linked, not
    written again (see `_link_if_same`).
    """
    final = root / f"step-{snap.step:06d}"
    recover_children(root)
    with atomic_dir(final, size_hint=snap.nbytes + _JSON_ALLOWANCE) as tmp:
        weights = tmp / "trainable.safetensors"
        if same_weights is None or not _link_if_same(same_weights, snap.weights, weights):
            save_file(snap.weights, str(weights))
        save_file(snap.optimizer, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(snap.optimizer_meta), encoding="utf-8")
        save_file(snap.rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(snap.state, indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n", encoding="utf-8")
    prune(root, keep, protect or set())
    return final


def _link_if_same(source: Path, tensors: dict[str, torch.Tensor], target: Path) -> bool:
    """Hard-link `source` as `target` when it holds exactly `tensors` (same names, dtypes, shapes
    and values; comparing them reads the file back from the page cache, far cheaper than writing
    it). The files are never modified in place (directories are swapped whole), so sharing one
    inode is safe; a checkpoint stays self-contained when `model/` is replaced or pruned."""
    try:
        stored = load_file(str(source))
    except (OSError, SafetensorError):
        return False
    if stored.keys() != tensors.keys():
        return False
    if not all(stored[k].dtype == t.dtype and stored[k].shape == t.shape and torch.equal(stored[k], t.cpu())
               for k, t in tensors.items()):
        return False
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not supported: write it
        return False
    return True


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    protect: set[int] | None = None,
    trainable: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step` now (see `write_checkpoint`).

    `trainable` and `optimizer_state`, when given, replace the model's and optimizer's own
    (sharded training passes them gathered whole, so every checkpoint has one format).
    """
    snap = snapshot(step, model, optimizer, state, trainable, optimizer_state)
    return write_checkpoint(root, snap, keep, protect)


class BackgroundWriter:
    """Runs one write job at a time off the training thread.

    The training thread takes a snapshot (a memory copy: well under a second where writing
    the same ~1.6 GB of a full fine-tune's weights and AdamW moments takes several) and goes
    on. The job's outcome is collected back on the training thread (`poll`, `wait`), so its
    events are logged in order and its error, a full disk say, still stops the run there.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._outcome: tuple[Any, BaseException | None] = (None, None)
        self._done: Callable[[Any], None] = lambda _result: None
        self.busy_s = 0.0  # seconds spent writing, summed over jobs

    def submit(self, job: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Start `job` once the previous one ended; `done(result)` runs on the caller's thread."""
        self.wait()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                self._outcome = (job(), None)
            except BaseException as exc:  # handed to the training thread by wait()
                self._outcome = (None, exc)
            self.busy_s += time.perf_counter() - t0

        self._done = done
        self._thread = threading.Thread(target=run, name="tunecraft-writer", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        """Collect a finished job (raising its error), without waiting for a running one."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Wait for the running job, then run its `done` or raise its error."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        (result, error), self._outcome = self._outcome, (None, None)
        if error is not None:
            raise error
        self._done(result)

    def close(self) -> None:
        """Wait for the running job without raising (a run that already failed stops anyway)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _py_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def prune(root: Path, keep: int, protect: set[int]) -> None:
    """Remove dead processes' leftovers and all but the newest `keep` checkpoints (and `protect`)."""
    checkpoints = rundir.complete_checkpoints(root.parent)  # repairs leftovers first
    for ckpt in checkpoints[:-keep] if keep else checkpoints:
        if rundir.checkpoint_step(ckpt) not in protect:
            remove_dir(ckpt)  # never leaves a torn checkpoint that still has its COMPLETE marker


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    load_weights: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None] = load_trainable,
    adapt_optimizer_state: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from `path`; returns its state.json.

    `load_weights` and `adapt_optimizer_state` let sharded training place whole tensors
    into its shards. Raises `UnreadableCheckpoint` (corrupt files) before touching anything,
    and `CheckpointMismatch` (tensors that do not fit) before changing the weights.
    """
    files = read_checkpoint(path)
    try:
        load_weights(model, files.trainable)
        _optimizer_from_files(optimizer, files.optimizer, files.optimizer_meta, adapt_optimizer_state)
    except CheckpointMismatch as exc:
        raise CheckpointMismatch(f"{path}: {exc}") from None
    _restore_rng(files.rng)
    version, internal, gauss = files.state["py_random"]
    random.setstate((version, tuple(internal), gauss))
    return files.state


def read_checkpoint(path: Path) -> CheckpointFiles:
    """Parse every file of a checkpoint; torn or corrupt ones raise `UnreadableCheckpoint`."""
    if not (path / COMPLETE).is_file():
        raise UnreadableCheckpoint(f"{path}: incomplete checkpoint (no {COMPLETE} marker)")
    try:
        files = CheckpointFiles(
            trainable=load_file(str(path / "trainable.safetensors")),
            optimizer=load_file(str(path / "optimizer.safetensors")),
            optimizer_meta=json.loads((path / "optimizer.json").read_text(encoding="utf-8")),
            rng=load_file(str(path / "rng.safetensors")),
            state=json.loads((path / "state.json").read_text(encoding="utf-8")),
        )
        _check_shape_of_files(files)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableCheckpoint(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    return files


def _check_shape_of_files(files: CheckpointFiles) -> None:
    """The JSON has the fields resuming reads, and the RNG state is a byte tensor."""
    int(files.state["step"])
    _version, internal, _gauss = files.state["py_random"]
    if not isinstance(internal, list) or not isinstance(files.optimizer_meta["param_groups"], list):
        raise TypeError("state.json or optimizer.json lacks its lists")
    if files.rng["torch_cpu"].dtype != torch.uint8:
        raise ValueError("rng.safetensors: torch_cpu is not a byte tensor")


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint out of the way (`step-N.corrupt`), kept for inspection;
    left in place, it would count among the newest `keep` and have good ones pruned."""
    aside = path.with_name(f"{path.name}.corrupt")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    return aside
