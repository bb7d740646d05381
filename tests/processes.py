"""Test helpers that run real things: uvicorn on loopback in a thread, `tunecraft serve --data-dir`
as a process, a body in a forked child (and a kill at the worst moment of a directory
replacement, for that child)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`tunecraft serve BASE --data-dir DIR --api-key KEY` as a process (so it can be killed with -9)."""

    def __init__(self, base: Path, data_dir: Path, api_key: str, job_settings: list[str],
                 port: int | None = None) -> None:
        self.base, self.data_dir, self.port = base, data_dir, port or free_port()
        self.api_key, self.job_settings = api_key, job_settings
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"server-{self.port}.log"

    def start(self) -> ServiceProcess:
        import httpx

        cmd = [sys.executable, "-m", "tunecraft", "serve", str(self.base), "--port", str(self.port),
               "--api-key", self.api_key, "--data-dir", str(self.data_dir)]
        for item in self.job_settings:
            cmd += ["--job-setting", item]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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
