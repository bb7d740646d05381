"""Printing text that tunecraft did not write (data, model answers, paths, error messages).

rich reads `[...]` as markup: printed raw, `pip install 'tunecraft[parquet]'` loses its extra,
a training example holding `[/]` raises `MarkupError` mid-report, and `[red]` in a prompt
restyles the terminal. Every message built from such text goes through `plain` (no markup at
all) or has its pieces escaped with `escape` where the surrounding line keeps its own styling.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

__all__ = ["escape", "plain"]


def plain(console: Console) -> Callable[[str], None]:
    """A status printer for `console` that prints each message as the literal text it is."""

    def say(message: str) -> None:
        console.print(message, markup=False, highlight=False, soft_wrap=True)

    return say
