"""Fixtures for the hardening tests: tiny run directories and a real uvicorn server on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import LoopbackServer
from runs import build_lora_run


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
