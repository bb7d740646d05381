"""`tunecraft chat`: streamed answers equal batched greedy generation; history and /reset work."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from runs import build_lora_run
from tunecraft.serve.chat import chat_loop
from tunecraft.serve.engine import SamplingParams, generate_chat, load_target


def test_chat_loop_streams_the_greedy_answer_and_keeps_history(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = build_lora_run(tmp_path / "run", tiny_model_dir)
    lm = load_target(str(run))
    params = SamplingParams(max_tokens=12)
    lines = iter(["hello", "/reset", "refund please", "/exit"])
    out = io.StringIO()
    history = chat_loop(lm, params, read=lambda _prompt: next(lines), out=out)
    expected = generate_chat(lm, [[{"role": "user", "content": "refund please"}]], params)[0].text
    # After /reset only the second exchange remains, and its answer is the greedy completion.
    assert history == [
        {"role": "user", "content": "refund please"},
        {"role": "assistant", "content": expected},
    ]
    assert "(conversation cleared)" in out.getvalue()
    assert expected in out.getvalue()


def test_chat_cli_reads_stdin_until_eof(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = build_lora_run(tmp_path / "run", tiny_model_dir)
    res = subprocess.run(
        [sys.executable, "-m", "tunecraft", "chat", str(run), "--max-tokens", "5"],
        input="hi\n", capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "you> bot> " in res.stdout
