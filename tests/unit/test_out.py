"""Text tunecraft did not write (paths, data, model answers, error messages) prints literally:
rich markup would drop `[parquet]` from an install hint, or raise on a `[/]` in the data."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tunecraft.curves import print_verdict
from tunecraft.out import plain
from tunecraft.train.progress import Progress


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, color_system=None), buf


def test_an_error_naming_a_bracketed_path_prints_it_whole(tmp_path: Path) -> None:
    missing = tmp_path / "run[bold]v2"  # the error goes through the CLI's one error printer
    proc = subprocess.run([sys.executable, "-m", "tunecraft", "chat", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"error: model '{missing}'" in proc.stderr and "Traceback" not in proc.stderr


def test_status_messages_keep_brackets_and_never_raise() -> None:
    console, buf = _console()
    say = plain(console)
    say("install it: pip install 'tunecraft[parquet]'")
    say("a prompt that says [/] and [red]hi")
    out = buf.getvalue()
    assert "tunecraft[parquet]" in out and "[/] and [red]hi" in out


def test_a_verdict_and_progress_notes_holding_markup_print_literally() -> None:
    console, buf = _console()
    verdict = {"status": "healthy", "message": "healthy: answers like [/] and [b]x[/b] stayed",
               "recommended": {"step": 3, "path": "model/", "reason": "lowest [val] loss"},
               "suggestions": ["pip install 'tunecraft[qlora]'"], "notes": ["[/] note"]}
    print_verdict(verdict, console)
    out = buf.getvalue()
    for text in ("answers like [/] and [b]x[/b] stayed", "lowest [val] loss", "tunecraft[qlora]", "[/] note"):
        assert text in out
    console, buf = _console()
    with Progress(4, 0, enabled=True, console=console) as progress:
        progress.note("step 1: [/] val loss")
    assert "step 1: [/] val loss" in buf.getvalue()



def test_a_data_file_whose_name_holds_markup_keeps_it_in_the_token_table(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tunecraft.data.check import _stats_table, check_data

    data = tmp_path / "support[red]v2.jsonl"
    data.write_text('{"text": "a short document"}\n{"text": "another one"}\n', encoding="utf-8")
    console, buf = _console()
    console.print(_stats_table(check_data(data, model=str(tiny_model_dir))))
    assert "support[red]v2.jsonl" in buf.getvalue()
