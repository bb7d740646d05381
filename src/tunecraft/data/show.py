"""`tunecraft data show`: print examples exactly as training tokenizes them, loss tokens marked.

Seeing the rendered chat template and which tokens bear loss is the quickest way to catch a wrong
template, a missing end-of-turn token or a prompt that is trained on by mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from tunecraft.data.loader import load_examples
from tunecraft.data.render import IGNORE, TokenizedExample, tokenize_sequences
from tunecraft.data.schema import Example
from tunecraft.errors import ConfigError

LOSS_STYLE = "black on green"
# Without colours (a pipe, NO_COLOR) loss-bearing text is bracketed instead.
OPEN, CLOSE = "⟦", "⟧"


def token_runs(tok: TokenizedExample) -> list[tuple[list[int], bool]]:
    """Consecutive tokens grouped by whether they bear loss: [(ids, bears_loss), ...]."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(tok.input_ids, tok.labels):
        loss = label != IGNORE
        if runs and runs[-1][1] == loss:
            runs[-1][0].append(token)
        else:
            runs.append(([token], loss))
    return runs


def render_tokens(tok: TokenizedExample, tokenizer: Any, color: bool) -> Text:
    """The decoded example; loss-bearing runs highlighted (or bracketed without colour)."""
    text = Text()
    for ids, loss in token_runs(tok):
        piece = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not loss:
            text.append(piece)
        elif color:
            # A trained-on newline is invisible when highlighted; show it as a glyph.
            text.append(piece.replace("\n", "↵\n"), style=LOSS_STYLE)
        else:
            text.append(f"{OPEN}{piece}{CLOSE}")
    return text


def legend(color: bool) -> Text:
    if color:
        return Text.assemble(("trained on (loss-bearing)", LOSS_STYLE), "   context (no loss)")
    return Text(f"{OPEN}trained on (loss-bearing){CLOSE}   context (no loss)")


def _title(ex: Example, tok: TokenizedExample) -> str:
    cut = f" · {tok.truncated} cut by max length" if tok.truncated else ""
    return (f"{ex.path}:{ex.line} · {ex.format} · {tok.n_tokens} tokens · "
            f"{tok.n_loss} loss-bearing{cut}")


def show_examples(
    data: Path,
    model: str | None,
    n: int,
    max_length: int | None,
    console: Console,
) -> None:
    """Print the first `n` examples of `data` as `model`'s tokenizer renders them for training."""
    from tunecraft.models.facts import context_length
    from tunecraft.models.load import load_tokenizer
    from tunecraft.models.registry import DEFAULT_MODEL
    from tunecraft.models.resolve import resolve_model

    if max_length is not None and max_length < 1:
        raise ConfigError(f"--max-length {max_length}: must be a positive number of tokens")
    examples = load_examples(data)[: max(n, 0)]  # validation first: DataError lists all errors
    resolved = resolve_model(model or DEFAULT_MODEL)
    tokenizer = load_tokenizer(resolved.path)
    length = max_length or context_length(tokenizer, resolved.path)
    color = console.color_system is not None and not console.no_color
    console.print(legend(color))
    for ex in examples:
        toks = tokenize_sequences(ex, tokenizer, length)
        # A preference pair shows both sequences as training runs them, chosen first.
        sides = ("chosen", "rejected") if ex.format == "preference" else ("",)
        for side, tok in zip(sides, toks):
            console.rule(_title(ex, tok) + (f" · {side}" if side else ""), align="left")
            console.print(render_tokens(tok, tokenizer, color), highlight=False, markup=False)
            if tok.truncated:
                console.print(f"[… {tok.truncated} tokens cut at max length {length}]", style="dim",
                              highlight=False, markup=False)
