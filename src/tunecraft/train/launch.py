"""`tunecraft train --nproc-per-node N`: re-run the same command under torchrun.

The launcher flags (`--nproc-per-node`, `--nnodes`, rendezvous) go to torchrun; everything
else reaches each worker unchanged as `python -m tunecraft train ...`. Running
`torchrun ... -m tunecraft train ...` directly is equivalent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from tunecraft.errors import ConfigError

# tunecraft flag -> torchrun flag (same spelling: they pass through as given).
LAUNCHER_FLAGS = (
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--rdzv-backend",
    "--rdzv-conf",
    "--master-addr",
    "--master-port",
)


def launcher_args(values: dict[str, str | int | None]) -> list[str]:
    """`{"--nnodes": 2, "--rdzv-id": None}` -> ["--nnodes", "2"] (unset flags are left out)."""
    out: list[str] = []
    for flag in LAUNCHER_FLAGS:
        value = values.get(flag)
        if value is not None:
            out += [flag, str(value)]
    return out


def strip_launcher_flags(argv: list[str]) -> list[str]:
    """The command line without launcher flags, in `--flag value` or `--flag=value` form."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0].replace("_", "-")
        if name in LAUNCHER_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def torchrun_command(launcher: list[str], worker_argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "tunecraft", *worker_argv]


def relaunch(launcher: list[str], argv: list[str]) -> int:
    """Run `argv` (starting with "train") under torchrun; returns its exit code.

    Ctrl-C reaches every process of the terminal's group by itself; a SIGTERM sent to this
    process alone is forwarded to torchrun, which forwards it to every worker.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        raise ConfigError(
            "already running under torchrun: drop --nproc-per-node/--nnodes (torchrun's own flags set them)"
        )
    if "--nnodes" in launcher and "--rdzv-endpoint" not in launcher and "--master-addr" not in launcher:
        raise ConfigError("--nnodes needs --rdzv-endpoint HOST:PORT (or --master-addr) so the machines can meet")
    proc = subprocess.Popen(torchrun_command(launcher, strip_launcher_flags(argv)))
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if signum == signal.SIGTERM:
            proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    # torchrun itself exits 1 on a signal, after the workers checkpointed and stopped: report
    # what a single process reports, "interrupted, resumable".
    return 130 if received and code != 0 else code
