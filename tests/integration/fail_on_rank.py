"""`python -m fail_on_rank train ...`: tunecraft's CLI, except that rank 1 raises at its third
training forward pass (a stand-in for an out-of-memory error or a bad node)."""

from __future__ import annotations

import os
from typing import Any

from tunecraft.cli import main
from tunecraft.train import distributed

FAIL_AT = 3


def _fail_on_rank_1() -> None:
    if os.environ.get("RANK") != "1":
        return
    real = distributed.compute_loss
    calls = {"n": 0}

    def failing(model: Any, batch: Any, engine: str, with_accuracy: bool = False) -> Any:
        if model.training:
            calls["n"] += 1
            if calls["n"] == FAIL_AT:
                raise RuntimeError("injected failure on rank 1")
        return real(model, batch, engine, with_accuracy)

    distributed.compute_loss = failing  # our own module, for this test process only


if __name__ == "__main__":
    _fail_on_rank_1()
    main()
