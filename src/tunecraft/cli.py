"""Command line: each verb is one function that parses flags and calls the library. No logic here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunecraft.errors import TunecraftError

app = typer.Typer(
    help="Fine-tune a pre-trained language model on your data, prove it helped, and deploy it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Validate and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model name, local HF dir, .gguf file or Hub id."),
]


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the models tunecraft knows, the default first."""
    from tunecraft.models.listing import list_models, print_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_models(rows, console)


@app.command()
def doctor() -> None:
    """Check this machine: versions, CPU/GPU, threads, cache, default model."""
    from tunecraft.doctor import run_doctor

    raise typer.Exit(run_doctor(console))


@data_app.command("check")
def data_check(
    data: Annotated[Path, typer.Argument(help="Training data (JSONL or CSV).")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation data.")] = None,
    model: ModelOpt = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Max tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Validate a dataset: every problem as PATH:LINE: code: message, then statistics."""
    from tunecraft.data.check import check_data, print_report

    report = check_data(data, val=val, model=model, max_length=max_length)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report, console)
    raise typer.Exit(1 if report.n_errors else 0)


@data_app.command("show")
def data_show(
    data: Annotated[Path, typer.Argument(help="Data file.")],
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("-n", help="How many examples.")] = 3,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help="Max tokens.")] = None,
) -> None:
    """Render examples exactly as training sees them; loss-bearing tokens highlighted."""
    from tunecraft.data.show import show_examples

    show_examples(data, model=model, n=n, max_length=max_length, console=console)


def main() -> None:
    """Console entry point: user errors print one clear message, never a stack trace."""
    try:
        app()
    except TunecraftError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
