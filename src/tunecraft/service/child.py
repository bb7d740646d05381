"""`python -m tunecraft.service.child train ...`: the CLI, in a job's child process.

The same entry point as `tunecraft train`, plus one thing: the child dies with the server
(Linux `PR_SET_PDEATHSIG`), so a server killed with -9 leaves no orphan training behind; on
restart the job resumes from its last checkpoint instead of racing a ghost for the run dir.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the server's restart recovery still resumes
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


if __name__ == "__main__":
    expected = int(os.environ.get("TUNECRAFT_SERVICE_PID", os.getppid()))
    die_with_parent(expected)
    from tunecraft.cli import main

    sys.argv[0] = "tunecraft"
    main()
