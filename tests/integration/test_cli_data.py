"""Real runs of `tunecraft data check` and `tunecraft data show` (subprocess and in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunecraft.cli import app

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


def run_cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
    if home is not None:
        env["TUNECRAFT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "tunecraft", *args], env=env, capture_output=True, text=True,
        timeout=300, cwd=ASSETS,
    )


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_check_reports_every_error_as_path_line_code_and_exits_1(tiny_model_dir: Path) -> None:
    proc = run_cli("data", "check", "bad_role.jsonl", "--val", "invalid_utf8.jsonl", "--model", str(tiny_model_dir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert 'bad_role.jsonl:2: bad_role: messages[0].role is "human"; use "user"' in lines
    assert any(line.startswith("invalid_utf8.jsonl:2: invalid_utf8: byte 16 of the line (0xe9)") for line in lines)
    assert "2 errors" in proc.stdout and "fix the errors" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_check_valid_crlf_bom_file_prints_stats_and_exits_0(tiny_model_dir: Path) -> None:
    proc = run_cli("data", "check", "chat_bom_crlf.jsonl", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "chat_bom_crlf.jsonl: few_examples: only 4 training examples" in out
    for label in ("examples", "loss-bearing tokens", "length p50 / p90 / p99", "longer than max length"):
        assert label in out
    assert "data is valid" in out


@pytest.mark.parametrize(
    ("name", "code"),
    [("empty_file.jsonl", "empty_file"), ("csv_columns.csv", "csv_columns"), ("not_jsonl.json", "not_jsonl"),
     ("mixed_formats.jsonl", "mixed_formats"), ("no_assistant.jsonl", "no_assistant")],
)
def test_check_in_process_error_kinds(name: str, code: str) -> None:
    result = invoke("data", "check", str(ASSETS / name))  # no model needed: the data is broken
    assert result.exit_code == 1, result.output
    assert f": {code}: " in result.output


def test_check_json_has_issues_and_stats(tiny_model_dir: Path) -> None:
    result = invoke("data", "check", str(ASSETS / "leak_train.jsonl"), "--val", str(ASSETS / "leak_val.jsonl"),
                    "--model", str(tiny_model_dir), "--max-length", "16", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["max_length"] == 16
    codes = {(Path(i["path"]).name, i["line"], i["code"], i["severity"]) for i in data["issues"]}
    assert ("leak_val.jsonl", 1, "leak_exact", "warning") in codes
    assert ("leak_val.jsonl", 3, "leak_near", "warning") in codes
    assert ("leak_train.jsonl", 0, "too_long", "warning") in codes
    assert [f["role"] for f in data["files"]] == ["train", "val"]
    assert data["files"][1]["stats"]["too_long"] == 4


def test_check_json_exits_1_on_errors() -> None:
    result = invoke("data", "check", str(ASSETS / "invalid_weight.jsonl"), "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and [i["code"] for i in data["issues"]] == ["invalid_weight"]


def test_show_marks_loss_bearing_tokens(tiny_model_dir: Path) -> None:
    proc = run_cli("data", "show", "chat.jsonl", "-n", "2", "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "⟦trained on (loss-bearing)⟧" in out  # no colours in a pipe: brackets mark loss
    assert "⟦Your card arrives within 5 business days.<|im_end|>⟧" in out
    assert "⟦I have blocked it. A new card is on its way.<|im_end|>⟧" in out
    assert "Hello! How can I help?<|im_end|>" in out and "⟦Hello!" not in out  # weight 0
    assert "chat.jsonl:1 · chat ·" in out and "loss-bearing" in out
    assert "chat.jsonl:3" not in out  # -n 2


def test_show_truncation_and_colour(tiny_model_dir: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from tunecraft.data.show import show_examples

    out = StringIO()
    console = Console(file=out, width=200, color_system="truecolor", force_terminal=True)
    show_examples(ASSETS / "prompt_completion.jsonl", model=str(tiny_model_dir), n=1, max_length=10, console=console)
    text = out.getvalue()
    assert "\x1b[" in text and "⟦" not in text  # highlighted with colour instead of brackets
    assert "cut by max length" in text and "tokens cut at max length 10" in text


def test_show_refuses_broken_data_listing_errors(tiny_model_dir: Path) -> None:
    proc = run_cli("data", "show", "missing_field.jsonl", "--model", str(tiny_model_dir))
    assert proc.returncode == 1
    assert "missing_field.jsonl:2: missing_field:" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.smoke
def test_check_with_the_default_model(default_model_dir: Path) -> None:
    home = default_model_dir.parents[1]  # HOME/models/<converted dir>
    proc = run_cli("data", "check", "leak_train.jsonl", "--val", "leak_val.jsonl", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smollm2-135m-instruct" in proc.stdout and "max length 8192" in proc.stdout
    assert "leak_val.jsonl:1: leak_exact: identical to training example leak_train.jsonl:2" in proc.stdout
