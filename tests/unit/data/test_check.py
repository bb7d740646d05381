"""check_data / print_report: all issues at once, statistics only for clean files, JSON shape."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tunecraft.data import check as check_module
from tunecraft.data.check import FEW_TRAIN, check_data, print_report
from tunecraft.errors import ConfigError

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "data"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(n: int) -> list[dict[str, str]]:
    return [{"prompt": f"Question number {i} about topic {i * 7}", "completion": f"Answer {i}"} for i in range(n)]


def printed(report: Any) -> str:
    out = StringIO()
    print_report(report, Console(file=out, width=80, color_system=None))
    return out.getvalue()


def test_clean_file_has_stats_and_no_issues(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", rows(FEW_TRAIN))
    report = check_data(data, model=str(tiny_model_dir))
    assert report.issues == [] and report.n_errors == 0 and report.n_warnings == 0
    stats = report.stats["train"]
    assert stats is not None and stats.examples == FEW_TRAIN and stats.loss_tokens > 0
    assert report.max_length == 512 and report.model == str(tiny_model_dir)
    assert "data is valid: no errors, no warnings" in printed(report)


def test_errors_are_all_listed_and_no_model_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not be resolved for broken data")

    monkeypatch.setattr(check_module, "_load_tokenizer", boom)
    report = check_data(ASSETS / "bad_role.jsonl", val=ASSETS / "invalid_json.jsonl")
    assert [(Path(i.path).name, i.line, i.code) for i in report.issues] == [
        ("bad_role.jsonl", 2, "bad_role"),
        ("invalid_json.jsonl", 2, "invalid_json"),
    ]
    assert report.n_errors == 2 and report.stats == {"train": None, "val": None}
    text = printed(report)
    assert f"{ASSETS / 'bad_role.jsonl'}:2: bad_role: " in text
    assert "2 errors" in text


def test_weights_are_never_loaded(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    import tunecraft.models.load as load

    def no_weights(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data check must not load model weights")

    monkeypatch.setattr(load, "load_model", no_weights)
    report = check_data(ASSETS / "chat.jsonl", model=str(tiny_model_dir))
    # The statistics were computed with the tokenizer alone: they equal training's tokenization.
    tokenized = _tokenized(ASSETS / "chat.jsonl", tiny_model_dir, report.max_length)
    stats = report.stats["train"]
    assert stats is not None and (stats.examples, stats.tokens, stats.loss_tokens, stats.max) == (
        3, sum(t.n_tokens for t in tokenized), sum(t.n_loss for t in tokenized),
        max(t.n_tokens for t in tokenized),
    )


def _tokenized(path: Path, model_dir: Path, max_length: int | None) -> list[Any]:
    from tunecraft.data.loader import load_examples
    from tunecraft.data.render import tokenize_example
    from tunecraft.models.load import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    return [tokenize_example(e, tokenizer, max_length) for e in load_examples(path)]


def test_clean_val_gets_stats_when_train_is_broken(tmp_path: Path, tiny_model_dir: Path) -> None:
    report = check_data(ASSETS / "missing_field.jsonl", val=ASSETS / "text.jsonl", model=str(tiny_model_dir))
    assert report.stats["train"] is None
    val = report.stats["val"]
    tokenized = _tokenized(ASSETS / "text.jsonl", tiny_model_dir, report.max_length)
    # raw text: every token bears loss
    assert val is not None and (val.examples, val.tokens, val.loss_tokens) == (
        2, sum(t.n_tokens for t in tokenized), sum(t.n_tokens for t in tokenized),
    )
    assert "skipped" in printed(report)


def test_warnings_exit_clean(tmp_path: Path, tiny_model_dir: Path) -> None:
    report = check_data(ASSETS / "duplicates.jsonl", model=str(tiny_model_dir), max_length=8)
    codes = [(i.line, i.code) for i in report.issues]
    assert (0, "few_examples") in codes and (3, "duplicate") in codes and (0, "too_long") in codes
    assert report.n_errors == 0 and report.n_warnings == len(codes)
    assert report.stats["train"] is not None and report.stats["train"].too_long == 3
    few = next(i for i in report.issues if i.code == "few_examples")
    assert "only 3 training examples" in few.message and str(FEW_TRAIN) in few.message


def test_leakage_is_reported_on_the_val_file(tiny_model_dir: Path) -> None:
    report = check_data(ASSETS / "leak_train.jsonl", val=ASSETS / "leak_val.jsonl", model=str(tiny_model_dir))
    leaks = [(i.line, i.code) for i in report.issues if i.code.startswith("leak")]
    assert leaks == [(1, "leak_exact"), (2, "leak_near"), (3, "leak_near")]
    train = str(ASSETS / "leak_train.jsonl")
    assert all(i.path == str(ASSETS / "leak_val.jsonl") for i in report.issues if i.code.startswith("leak"))
    assert f"{train}:2" in report.issues[[i.code for i in report.issues].index("leak_exact")].message


def test_json_has_every_issue_with_severity(tiny_model_dir: Path) -> None:
    report = check_data(ASSETS / "duplicates.jsonl", model=str(tiny_model_dir))
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True and data["n_errors"] == 0 and data["n_warnings"] == 2
    assert {tuple(sorted(i)) for i in data["issues"]} == {("code", "line", "message", "path", "severity")}
    (file,) = data["files"]
    assert file["role"] == "train" and file["format"] == "prompt_completion" and file["examples"] == 3
    assert set(file["stats"]) >= {"examples", "tokens", "loss_tokens", "p50", "p90", "p99", "max",
                                  "too_long", "tokens_cut", "max_length"}


def test_template_errors_become_issues(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "strict-model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    # Like Llama-2/Mistral templates that reject system messages.
    config["chat_template"] = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    report = check_data(ASSETS / "chat.jsonl", model=str(model))
    assert [(i.line, i.code) for i in report.issues if i.severity == "error"] == [(1, "template_error")]
    assert any("System role not supported" in i.message for i in report.issues)


def test_bad_max_length_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max-length"):
        check_data(ASSETS / "chat.jsonl", max_length=0)
