"""GGUF conversion bookkeeping (cache key, lock, temp dir, reuse) with a fake, instant converter.

The real conversion is covered by the smoke tests in test_default_model.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tunecraft import paths
from tunecraft.errors import ModelNotFoundError
from tunecraft.models import convert
from tunecraft.models.convert import COMPLETE_MARKER, cache_key, convert_gguf, is_complete


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "Tiny-Model.Q4_0.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


class FakeConverter:
    """Stands in for `_convert_into`: writes a config, counts calls, can be slow or fail."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, gguf: Path, target: Path) -> None:
        self.calls += 1
        target.mkdir(parents=True, exist_ok=True)  # save_pretrained accepts an existing dir
        (target / "config.json").write_text("{}", encoding="utf-8")
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("unsupported architecture 'foo'")


def test_converts_once_then_reuses(fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConverter()
    monkeypatch.setattr(convert, "_convert_into", fake)
    messages: list[str] = []
    first = convert_gguf(fake_gguf, on_status=messages.append)
    second = convert_gguf(fake_gguf, on_status=messages.append)
    assert first == second and is_complete(first)
    assert fake.calls == 1
    assert first.parent == paths.models_dir()
    assert first.name.startswith("tiny-model.q4_0-")
    assert any("converting Tiny-Model.Q4_0.gguf" in m for m in messages)
    assert any(m.startswith("converted in") for m in messages)
    assert not list(first.parent.glob("*.tmp-*"))


def test_progress_goes_to_stderr_by_default(
    fake_gguf: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(convert, "_convert_into", FakeConverter())
    convert_gguf(fake_gguf)
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays clean for --json output
    assert "converting Tiny-Model.Q4_0.gguf" in err


def test_cache_key_changes_when_the_file_changes(fake_gguf: Path) -> None:
    before = cache_key(fake_gguf, "tiny")
    fake_gguf.write_bytes(b"GGUF" + b"\1" * 100)  # new size
    assert cache_key(fake_gguf, "tiny") != before
    assert before.startswith("tiny-")


def test_leftovers_of_a_crash_are_cleaned(fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert, "_convert_into", FakeConverter())
    root = paths.models_dir()
    key = cache_key(fake_gguf)
    (root / f"{key}.tmp-99999").mkdir()  # a crashed converter's temp dir
    (root / key).mkdir()  # a final dir without the completion marker
    (root / key / "model.safetensors").write_bytes(b"half written")
    result = convert_gguf(fake_gguf, on_status=lambda _m: None)
    assert is_complete(result)
    assert not (result / "model.safetensors").exists()
    assert not list(root.glob("*.tmp-*"))


def test_failed_conversion_leaves_nothing(fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert, "_convert_into", FakeConverter(fail=True))
    with pytest.raises(ModelNotFoundError, match="could not convert") as err:
        convert_gguf(fake_gguf, on_status=lambda _m: None)
    assert "unsupported architecture" in str(err.value)
    root = paths.models_dir()
    assert not (root / cache_key(fake_gguf)).exists()
    assert not list(root.glob("*.tmp-*"))


def test_concurrent_callers_convert_once(fake_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads (separate lock handles, like two processes) get one conversion between them."""
    fake = FakeConverter(delay_s=0.5)
    monkeypatch.setattr(convert, "_convert_into", fake)
    messages: list[str] = []
    results: list[Path] = []

    def worker() -> None:
        results.append(convert_gguf(fake_gguf, on_status=messages.append))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 2 and results[0] == results[1]
    assert fake.calls == 1
    assert any(m.startswith("waiting for another") for m in messages)
    assert (results[0] / COMPLETE_MARKER).is_file()
