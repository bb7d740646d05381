"""Atomic, resumable training checkpoints in safetensors + JSON (never pickle).

A checkpoint directory `checkpoints/step-000120/` holds:
- `trainable.safetensors`: the trainable parameters (LoRA weights, or the whole model), fp32;
- `optimizer.safetensors` + `optimizer.json`: AdamW's state tensors and its param groups;
- `rng.safetensors`: torch CPU (and CUDA) generator states;
- `state.json`: step, best validation loss and step, patience, the LR schedule position,
  and python's `random` state; `COMPLETE` is written last.

It is written through `durable.atomic_dir` (a temp directory, every file fsynced, then renamed):
a crash leaves either a complete checkpoint or a temp directory that is ignored and later removed.
Which checkpoints are complete is the run directory's contract (`rundir.complete_checkpoints`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunecraft import rundir
from tunecraft.durable import atomic_dir
from tunecraft.rundir import COMPLETE


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, as contiguous fp32 CPU tensors."""
    return {
        name: p.detach().to("cpu", torch.float32).contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    if missing:
        raise ValueError(f"checkpoint lacks trainable parameters: {missing[:5]}")
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
    sd = {"state": state, "param_groups": meta["param_groups"]}
    optimizer.load_state_dict(adapt(sd) if adapt is not None else sd)


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
    """Write checkpoint `step` atomically; prune old ones but keep the newest `keep` and `protect`.

    `trainable` and `optimizer_state`, when given, replace the model's and optimizer's own
    (sharded training passes them gathered whole, so every checkpoint has one format).
    """
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        save_file(trainable if trainable is not None else trainable_state(model), str(tmp / "trainable.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_files(
            optimizer_state if optimizer_state is not None else optimizer.state_dict()
        )
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta), encoding="utf-8")
        save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
        full_state = {**state, "step": step, "py_random": _py_random_state()}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n", encoding="utf-8")
    prune(root, keep, protect or set())
    return final


def _py_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def prune(root: Path, keep: int, protect: set[int]) -> None:
    """Remove other processes' stale temp dirs and all but the newest `keep` (and `protect`)."""
    for stale in [*root.glob("step-*.tmp-*"), *root.glob("step-*.old-*")]:
        if stale.name.rsplit("-", 1)[-1] != str(os.getpid()):
            shutil.rmtree(stale, ignore_errors=True)
    checkpoints = rundir.complete_checkpoints(root.parent)
    for ckpt in checkpoints[:-keep] if keep else checkpoints:
        if rundir.checkpoint_step(ckpt) not in protect:
            shutil.rmtree(ckpt, ignore_errors=True)


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    load_weights: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None] = load_trainable,
    adapt_optimizer_state: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG from `path`; returns its state.json.

    `load_weights` and `adapt_optimizer_state` let sharded training place whole tensors
    into its shards.
    """
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path}: incomplete checkpoint (no {COMPLETE} marker)")
    load_weights(model, load_file(str(path / "trainable.safetensors")))
    _optimizer_from_files(
        optimizer,
        load_file(str(path / "optimizer.safetensors")),
        json.loads((path / "optimizer.json").read_text(encoding="utf-8")),
        adapt_optimizer_state,
    )
    _restore_rng(load_file(str(path / "rng.safetensors")))
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    version, internal, gauss = state["py_random"]
    random.setstate((version, tuple(internal), gauss))
    return state
