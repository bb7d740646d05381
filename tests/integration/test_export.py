"""`tunecraft export`: adapter, merged and GGUF artifacts reload with the run's behaviour.

GGUF greedy-equality tests use their own tiny Llama (hidden 64: every row is a whole number of
Q8_0 blocks of 32) whose weights are snapped to a grid that fp16 and Q8_0 both store exactly
(multiples of 2^-8, each 32-block holding +-127 steps). Random tiny models have near-tied logits,
so quantization noise alone could flip a greedy token; on the grid, any difference in the output
is a conversion bug (layout, RoPE permutation, tokenizer), which is what these tests are for.
Quantization error itself is bounded by the export's own logit check (verify.TOLERANCES).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runs import build_full_run, build_lora_run
from tiny import build_tokenizer
from tunecraft.export import ExportError, ExportVerificationError, export_run, verify_export
from tunecraft.models.load import load_model, load_tokenizer
from tunecraft.serve.engine import SamplingParams, generate_chat, load_target

PROMPTS = [[{"role": "user", "content": t}] for t in ("hello, how can i help you today?", "refund request 24")]


def _build_gguf_base(out: Path) -> Path:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, initializer_range=0.25, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lora_run(tmp_path_factory.mktemp("exp") / "lora-run", tiny_model_dir, system_prompt="Be brief.")


def _snap_to_q8_grid(w: torch.Tensor, step: float = 2**-8) -> torch.Tensor:
    q = (w.reshape(-1, 32) / step).round().clamp(-127, 127)
    rows = torch.arange(q.shape[0])
    peak = q.abs().argmax(dim=1)
    q[rows, peak] = torch.where(q[rows, peak] < 0, -127.0, 127.0)  # block max = 127 steps: scale == step
    return (q * step).reshape(w.shape)


def _snap_to_q4_grid(w: torch.Tensor, step: float = 2**-5) -> torch.Tensor:
    """Q4_0 stores 4-bit values -8..7 times one fp16 scale per 32-block, the scale being the
    block's largest-magnitude value over -8: with that value at -8 steps, the scale is `step`."""
    q = (w.reshape(-1, 32) / step).round().clamp(-8, 7)
    rows = torch.arange(q.shape[0])
    q[rows, q.abs().argmax(dim=1)] = -8.0
    return (q * step).reshape(w.shape)


@pytest.fixture(scope="module")
def gguf_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_gguf_base(tmp_path_factory.mktemp("gguf") / "base")


def _snapped_run(base: Path, name: str, snap) -> Path:
    run = build_full_run(base.parent / name, base, scale=0.0)
    model = load_model(run / "model")
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(snap(param))
    model.save_pretrained(str(run / "model"), safe_serialization=True)
    return run


@pytest.fixture(scope="module")
def gguf_run(gguf_base: Path) -> Path:
    """A full run whose weights fp16 and Q8_0 store exactly."""
    return _snapped_run(gguf_base, "gguf-run", _snap_to_q8_grid)


@pytest.fixture(scope="module")
def gguf_run_q4(gguf_base: Path) -> Path:
    """A full run whose weights Q4_0 stores exactly."""
    return _snapped_run(gguf_base, "gguf-run-q4", _snap_to_q4_grid)


def test_gguf_of_a_lora_run_passes_verification(gguf_base: Path, tmp_path: Path) -> None:
    run = build_lora_run(tmp_path / "lora-gguf", gguf_base, scale=0.05)
    res = export_run(run, "gguf", tmp_path / "g", gguf_type="f16")
    assert "logits match" in res.checks[-1]


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_adapter_reloads_in_peft_with_equal_logits(lora_run: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    res = export_run(lora_run, "adapter", tmp_path / "adapter")
    assert (res.path / "adapter_model.safetensors").is_file() and (res.path / "chat_template.jinja").is_file()
    cfg = json.loads((res.path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and not cfg.get("modules_to_save")
    assert set(cfg["target_modules"]) <= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    lm = load_target(str(lora_run))
    ids = lm.chat_prompt(PROMPTS[0])
    exported = PeftModel.from_pretrained(load_model(tiny_model_dir), str(res.path)).eval()
    with lm.activate() as ref:
        assert torch.equal(_logits(ref, ids), _logits(exported, ids))


def test_merged_equals_adapter(lora_run: Path, tmp_path: Path) -> None:
    res = export_run(lora_run, "merged", tmp_path / "merged")
    assert (res.path / "model.safetensors").is_file() and not list(res.path.glob("*.bin"))
    gen = json.loads((res.path / "generation_config.json").read_text())
    tok = load_tokenizer(res.path)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ([gen["eos_token_id"]] if isinstance(gen["eos_token_id"], int) else gen["eos_token_id"])
    lm = load_target(str(lora_run))
    merged = load_target(str(res.path))
    assert merged.chat_prompt([{"role": "system", "content": "Be brief."}, *PROMPTS[0]]) == lm.chat_prompt(PROMPTS[0])
    ids = lm.chat_prompt(PROMPTS[1])
    with lm.activate() as ref, merged.activate() as m:
        assert (_logits(ref, ids) - _logits(m, ids)).abs().max() < 1e-4


def test_merged_half_precision_and_full_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    full = build_full_run(tmp_path / "full-run", tiny_model_dir)
    res = export_run(full, "merged", tmp_path / "full-merged", dtype="bfloat16")
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    with pytest.raises(ExportError, match="no adapter"):
        export_run(full, "adapter", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "q4_0"])
def test_gguf_reloads_through_transformers_with_equal_greedy_output(request: pytest.FixtureRequest, tmp_path: Path,
                                                                    gguf_type: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_run = request.getfixturevalue("gguf_run_q4" if gguf_type == "q4_0" else "gguf_run")
    res = export_run(gguf_run, "gguf", tmp_path / "gguf", gguf_type=gguf_type)
    assert [p.name for p in res.path.iterdir()] == ["model.gguf"]
    if gguf_type != "f16":
        import gguf

        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(res.path / "model.gguf")).tensors}
        assert types["blk.0.attn_q.weight"] == gguf_type.upper() == types["token_embd.weight"]
    lm = load_target(str(gguf_run))
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    expected = [c.token_ids for c in generate_chat(lm, PROMPTS, params)]
    tok = AutoTokenizer.from_pretrained(str(res.path), gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(str(res.path), gguf_file="model.gguf", dtype=torch.float32)
    for conv, want in zip(PROMPTS, expected):
        ids = lm.chat_prompt(conv)
        rendered = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert tok(rendered, add_special_tokens=False)["input_ids"] == ids
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out[0, len(ids):].tolist() == want


def test_gguf_metadata_for_llama_cpp(gguf_run: Path, tmp_path: Path) -> None:
    import gguf

    res = export_run(gguf_run, "gguf", tmp_path / "g", gguf_type="q8_0")
    reader = gguf.GGUFReader(str(res.path / "model.gguf"))
    f = {k: reader.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template")}
    tok = load_tokenizer(gguf_run / "model")
    assert f["general.architecture"] == "llama" and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert f["tokenizer.chat_template"] == tok.chat_template
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd


def test_gguf_lora_of_the_default_architecture_passes_verification(gguf_base: Path, tmp_path: Path) -> None:
    """The llama-architecture adapter (Q/K rows permuted in lora_b) checks itself against the merge;
    a file whose lora_b keeps HF's row order is caught by the same check."""
    import gguf
    import numpy as np

    from tunecraft.export.gguf_lora import check_lora_gguf

    run = build_lora_run(tmp_path / "lora-run", gguf_base, scale=0.05)
    res = export_run(run, "gguf-lora", tmp_path / "g", gguf_type="q8_0")
    assert res.format == "gguf-lora (q8_0)" and "rebuilds the run's merged weights" in res.checks[-1]
    reader = gguf.GGUFReader(str(res.path / "adapter.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight.lora_a"] == "Q8_0" and types["blk.0.attn_q.weight.lora_b"] == "F16"  # rows of r=4
    # the same adapter with lora_b in HF's rotate-half row order: what a missing permutation would write
    bad = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), arch="llama")
    bad.add_type("adapter")
    bad.add_string("adapter.type", "lora")
    bad.add_float32("adapter.lora.alpha", 8.0)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        if t.name.startswith("blk.0.attn_q") and t.name.endswith("lora_b"):
            data = data.reshape(4, -1, 2, 4).swapaxes(1, 2).reshape(data.shape)  # undo the per-head interleave
        bad.add_tensor(t.name, np.ascontiguousarray(data, dtype=np.float32))
    bad.write_header_to_file()
    bad.write_kv_data_to_file()
    bad.write_tensors_to_file()
    bad.close()
    base = load_model(gguf_base)
    merged = export_run(run, "merged", tmp_path / "merged").path
    got = check_lora_gguf(tmp_path / "bad.gguf", base, load_model(merged))
    assert got.pairs == 14 and got.worst > 0.1 * got.scale  # caught: far outside any tolerance


def test_gguf_lora_refuses_a_full_run_and_4_bit_factors(gguf_base: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="with gguf-lora: use f32, f16, q8_0"):
        export_run(tmp_path / "any", "gguf-lora", tmp_path / "q4", gguf_type="q4_0")
    full = build_full_run(tmp_path / "full-run", gguf_base, scale=0.0)
    with pytest.raises(ExportError, match="no adapter"):
        export_run(full, "gguf-lora", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_tampered_chat_template_is_caught(lora_run: Path, tmp_path: Path) -> None:
    res = export_run(lora_run, "merged", tmp_path / "m")
    template = res.path / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>assistant", "<|im_start|>bot"))
    with pytest.raises(ExportVerificationError, match="render"):
        verify_export(lora_run, res.path, "merged")


def test_missing_end_of_turn_is_caught(lora_run: Path, tmp_path: Path) -> None:
    res = export_run(lora_run, "adapter", tmp_path / "a")
    gen = json.loads((res.path / "generation_config.json").read_text())
    gen["eos_token_id"] = 0
    (res.path / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(ExportVerificationError, match="end-of-turn"):
        verify_export(lora_run, res.path, "adapter")


def test_cli_refuses_non_empty_out_and_exits_non_zero(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run(
        [sys.executable, "-m", "tunecraft", "export", str(lora_run), "--format", "adapter", "--out", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.smoke
def test_default_model_gguf_q8_0_round_trip(default_model_dir: Path, tmp_path: Path) -> None:
    """The real default: a (near no-op) LoRA run over it exports to q8_0 GGUF with the same greedy answer."""
    from transformers import AutoModelForCausalLM

    run = build_lora_run(tmp_path / "smol-run", default_model_dir, scale=1e-4)
    res = export_run(run, "gguf", tmp_path / "gguf", gguf_type="q8_0")
    lm = load_target(str(run), device="cpu")
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    want = generate_chat(lm, [conv], SamplingParams(max_tokens=8))[0].token_ids
    model = AutoModelForCausalLM.from_pretrained(str(res.path), gguf_file="model.gguf", dtype=torch.float32)
    ids = lm.chat_prompt(conv)
    out = model.generate(torch.tensor([ids]), max_new_tokens=len(want), do_sample=False, pad_token_id=0)
    assert out[0, len(ids):].tolist()[: len(want)] == want
