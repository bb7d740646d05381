"""Fixtures for the hardening tests: tiny run directories and a real uvicorn server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runs import build_lora_run


class LoopbackServer:
    """uvicorn serving `app` on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture()
def start_server() -> Iterator[Callable[[Any], LoopbackServer]]:
    """`start_server(app)` -> a running server, stopped when the test ends."""
    started: list[LoopbackServer] = []

    def start(app: Any) -> LoopbackServer:
        started.append(LoopbackServer(app))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_run(tmp_path_factory.mktemp("hardening") / "run-a", tiny_model_dir, seed=1)


@pytest.fixture(scope="module")
def served(lora_run: Path) -> dict[str, Any]:
    """The LoRA run loaded once per module, as `serve` loads it ({"run-a": LoadedModel})."""
    from tunecraft.serve.server import load_targets

    return load_targets([str(lora_run)])
