"""Test helpers that run real things: uvicorn on loopback in a thread, a body in a forked child
(and a kill at the worst moment of a directory replacement, for that child)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LoopbackServer:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, app: Any, log_level: str = "critical") -> None:
        import uvicorn

        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start within 20 s")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_in_child(body: Callable[[], None], timeout: float = 60.0) -> int:
    """Run `body` in a forked child (one torch thread); returns its wait status."""
    import torch

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            body()
            code = 0
        except BaseException:  # noqa: BLE001  (the child reports any failure, then exits)
            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child process hung")
        time.sleep(0.005)


def die_between_renames() -> None:
    """(In a forked child.) SIGKILL this process the moment a temp directory is about to be
    renamed onto a name whose previous version was just parked as `.old-*`: the window with no
    target. Patches this process's `os.replace` only; the child never returns to pytest."""
    real = os.replace

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        s, d = Path(src), Path(dst)
        if ".tmp-" in s.name and not d.exists() and any(d.parent.glob(f"{d.name}.old-*")):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)

    os.replace = replace  # type: ignore[assignment]
