"""Model families end to end on tiny random models of each family's shape (tests/tiny.py): Llama 3,
Qwen2.5, Mistral and Gemma 3, each with a tokenizer of its kind and its turn layout.

Per family: the template's end-of-turn token is found (it is not always the EOS), the loss mask
covers exactly the assistant's answers and their end-of-turn tokens, the fast engine's packed
loss equals the reference engine's, and the whole loop runs: LoRA training to memorization,
evaluation with closed-label decoding, adapter and merged exports (each verifies itself against
the run) and generation that stops at the end of the turn with the trained answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import FAMILIES, INTENTS, build_family_model_dir
from tunecraft import rundir
from tunecraft.config import build_config
from tunecraft.data.render import IGNORE, end_of_turn, tokenize_example
from tunecraft.data.schema import Example, Message
from tunecraft.eval.evaluate import EvalOptions, evaluate_run
from tunecraft.export import TOLERANCES, export_run
from tunecraft.models.load import load_model, load_tokenizer
from tunecraft.serve.engine import SamplingParams, generate_chat, load_target

NAMES = list(FAMILIES)


@pytest.fixture(scope="module", params=NAMES)
def family_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, build_family_model_dir(tmp_path_factory.mktemp(f"family-{name}"), name)


def _chat(*turns: str) -> Example:
    roles = ["user", "assistant"] * len(turns)
    return Example("chat", "t.jsonl", 1, messages=tuple(Message(r, t) for r, t in zip(roles, turns)))


def _loss_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for k, (tid, lab) in enumerate(zip(ids, labels)):
        if lab == IGNORE:
            continue
        if spans and labels[k - 1] != IGNORE:
            spans[-1].append(tid)
        else:
            spans.append([tid])
    return spans


def test_the_mask_covers_the_answers_and_their_end_of_turn(family_dir: tuple[str, Path]) -> None:
    name, model_dir = family_dir
    family = FAMILIES[name]
    tok = load_tokenizer(model_dir)
    assert end_of_turn(tok) == family.end_of_turn
    ex = tokenize_example(_chat("hello about my refund", "refund", "and my pin reset", "pin_reset"), tok)
    spans = _loss_spans(ex.input_ids, ex.labels)
    decoded = [tok.decode(s, skip_special_tokens=False).strip() for s in spans]
    assert decoded == ["refund" + family.end_of_turn, "pin_reset" + family.end_of_turn]
    end_id = tok.convert_tokens_to_ids(family.end_of_turn)
    assert all(s[-1] == end_id for s in spans)  # nothing after the end token bears loss (Gemma's "\n")


def test_the_fast_engine_matches_the_reference_loss(family_dir: tuple[str, Path]) -> None:
    """The packed, unpadded engine computes each family's attention (biases, QK norms, Gemma's
    scalings and local layers) as the model's own forward does."""
    from tunecraft.data.batching import packed_batches, padded_batches
    from tunecraft.train.loss import compute_loss, supports_fast_path

    name, model_dir = family_dir
    tok = load_tokenizer(model_dir)
    examples = [tokenize_example(_chat(f"hello there, about my {i.replace('_', ' ')} please", i), tok) for i in INTENTS]
    idx = list(range(len(examples)))
    model = load_model(model_dir, torch.float32)
    assert supports_fast_path(model)
    with torch.no_grad():
        ref = compute_loss(model, padded_batches(examples, idx, len(idx), tok.pad_token_id)[0], "reference").loss_sum
        fast = compute_loss(model, packed_batches(examples, idx, len(idx))[0], "fast").loss_sum
    assert float(fast) == pytest.approx(float(ref), rel=1e-5)
    window = getattr(model.config, "sliding_window", None)
    if window and FAMILIES[name].name == "gemma3":  # the local layer's window is shorter than the examples
        assert min(len(e.input_ids) for e in examples) > window


def test_the_whole_loop(family_dir: tuple[str, Path], tmp_path: Path) -> None:
    """Train (to memorization: a full fine-tune, since LoRA on a random 32-wide model barely
    moves it), record the label set, evaluate constrained, export merged, generate to the end of
    the turn; and a LoRA run of the same family exports its adapter and merged model, verified."""
    from runs import build_lora_run
    from tunecraft.train.labels import record_labels
    from tunecraft.train.loop import build, train

    name, model_dir = family_dir
    family = FAMILIES[name]
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{opener}, about my {i.replace('_', ' ')}"},
                          {"role": "assistant", "content": i}]}
            for opener in ("hi", "hello", "hey there", "excuse me") for i in INTENTS]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    cfg = build_config(values={
        "model.name": str(model_dir), "data.train": str(data), "data.val": str(data), "train.out": str(run),
        "train.method": "full", "train.lr": 1e-2, "train.epochs": 60, "train.batch_size": 8,
        "train.precision": "fp32", "train.patience": None, "train.warmup_ratio": 0.0,
    })
    plan, rt = build(cfg)
    assert train(plan, rt).status == "finished"
    # What `tunecraft train` does next for a closed-label task: labels.json (its trie ends at the end of turn).
    record_labels(run, plan.config, plan.data.train_examples, plan.data.val_examples, plan.model.path)

    payload = evaluate_run(run, EvalOptions(data=data, baselines=[], general=False, report=False))
    tuned = payload["systems"]["tuned"]
    assert tuned["constrained"] and tuned["metrics"]["invalid_labels"] == 0
    assert tuned["metrics"]["accuracy"] >= 0.9, rundir.read_summary(run)  # memorized

    merged = export_run(run, "merged", tmp_path / "merged")  # verifies itself against the run's outputs
    lm = load_target(str(merged.path))
    answers = generate_chat(lm, [[{"role": "user", "content": "hello, about my refund"}]],
                            SamplingParams(max_tokens=16, temperature=0.0))
    assert answers[0].finish_reason == "stop"  # stopped at the end of the turn, not the length
    assert answers[0].text.strip() == "refund" and family.end_of_turn not in answers[0].text

    lora = build_lora_run(tmp_path / "lora-run", model_dir, scale=0.05)
    for fmt in ("adapter", "merged"):
        assert export_run(lora, fmt, tmp_path / f"lora-{fmt}").path.is_dir()


# GGUF: every family (all of FAMILIES) exports and reloads through transformers' GGUF loader with the run's greedy
# output. llama.cpp reads a few things from the file that the loader does not (Llama 3's
# rope_freqs tensor, Gemma 3's attention scale and local/global layout); `load_gguf_model`
# applies them by llama.cpp's rules and names each, and the Llama 3 case checks that the loader
# alone (rope_freqs ignored) would not pass. Gemma 3 exports in its released shape: a "▁"
# vocabulary without a dummy prefix, every 6th layer global (llama.cpp hard-codes that layout);
# the tiny family model has both different, and is refused with those two reasons.
RELOADED_AS = {"llama3": "llama", "qwen2": "qwen2", "mistral": "llama", "gemma3": "gemma3_text"}
# what llama.cpp reads from the file that transformers' loader does not (first word of each rule)
LLAMA_CPP_RULES = {"llama3": ["rope_freqs:"], "qwen2": [], "mistral": [], "gemma3": ["attention", "local/global", "global-layer"]}
STEP = 2**-8  # weights are multiples of it below 1 in magnitude: fp16 stores them exactly


def _snapped_full_run(run: Path, model_dir: Path) -> Path:
    """A full run with fresh weights large enough for RoPE and attention to matter (Llama 3's
    scaling moves the logits) and exact in fp16, so any greedy difference is a conversion bug."""
    from runs import build_full_run

    build_full_run(run, model_dir, scale=0.0)
    model = load_model(run / "model")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.round(torch.randn(param.shape, generator=gen) * 0.1 / STEP) * STEP)
    model.save_pretrained(str(run / "model"), safe_serialization=True)
    return run


def _gemma3_as_released(model_dir: Path, out: Path) -> Path:
    """The tiny Gemma 3 in the released models' shape: six layers, the sixth global (the layout
    llama.cpp fixes), linear RoPE scaling x8 on the global layers (as the 4B-27B models have), and
    a vocabulary with no dummy "▁" before the first word (as Gemma's)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from tunecraft.export.gguf_arch import gemma3_layer_types

    shutil.copytree(model_dir, out)
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["prepend_scheme"] = spec["decoder"]["prepend_scheme"] = "never"
    (out / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = AutoConfig.from_pretrained(out)
    config.num_hidden_layers, config.layer_types = 6, gemma3_layer_types(6)
    global_rope = {**config.rope_parameters["full_attention"], "rope_type": "linear", "factor": 8.0}
    config.rope_parameters = {**config.rope_parameters, "full_attention": global_rope}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig.from_pretrained(out)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def _greedy(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])  # an explicit mask: Llama 3's BOS is id 0, which `generate` would take for padding
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_gguf_export_reloads_with_equal_greedy_output_or_is_refused(family_dir: tuple[str, Path],
                                                                   tmp_path: Path) -> None:
    import gguf
    from transformers import AutoModelForCausalLM

    from runs import build_full_run
    from tunecraft.errors import TunecraftError
    from tunecraft.export.gguf_verify import load_gguf_model

    name, model_dir = family_dir
    if name == "gemma3":
        with pytest.raises(TunecraftError, match="GGUF export") as refused:
            export_run(build_full_run(tmp_path / "tiny-run", model_dir, scale=0.0), "gguf", tmp_path / "refused")
        assert "layer layout" in str(refused.value) and "before the first word only" in str(refused.value)
        model_dir = _gemma3_as_released(model_dir, tmp_path / "gemma3-released")
    run = _snapped_full_run(tmp_path / "run", model_dir)
    res = export_run(run, "gguf", tmp_path / "gguf", gguf_type="f16")  # its own check: logits within tolerance
    lm = load_target(str(run))
    conv = [{"role": "user", "content": "hello, about my refund"}]
    want = generate_chat(lm, [conv], SamplingParams(max_tokens=8, ignore_eos=True))[0].token_ids
    ids = lm.chat_prompt(conv)
    model, applied = load_gguf_model(res.path, "model.gguf")
    assert model.config.model_type == RELOADED_AS[name]
    assert _greedy(model, ids, 8) == want
    assert [rule.split()[0] for rule in applied] == LLAMA_CPP_RULES[name]
    if applied:  # without those rules (the loader alone) the logits fail the export's tolerance
        plain = AutoModelForCausalLM.from_pretrained(str(res.path), gguf_file="model.gguf", dtype=torch.float32)
        x = torch.tensor([ids])
        with torch.no_grad(), lm.activate() as ref:
            expected, got, loader_only = (m(input_ids=x).logits for m in (ref, model, plain))
        limit = TOLERANCES["gguf-f16"].limit(float(expected.abs().max()))
        assert (got - expected).abs().max() <= limit < (loader_only - expected).abs().max()
    for gguf_type in ("f32", "q8_0", "q4_0"):  # each verifies itself against the run's logits
        res = export_run(run, "gguf", tmp_path / f"gguf-{gguf_type}", gguf_type=gguf_type)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(res.path / "model.gguf")).tensors}
        assert types["blk.0.ffn_down.weight"] == gguf_type.upper() and types["output_norm.weight"] == "F32"


def test_gguf_lora_adapter_rebuilds_the_merged_weights(family_dir: tuple[str, Path], tmp_path: Path) -> None:
    """The adapter as llama.cpp's `--lora` GGUF, read back with gguf-py: base + alpha/r x B A equals
    the run's merged weight, B's rows permuted as the base GGUF's Q/K rows are (llama)."""
    import gguf
    from peft import PeftModel

    from runs import build_lora_run

    name, model_dir = family_dir
    run = build_lora_run(tmp_path / "lora-run", model_dir, scale=0.05)
    res = export_run(run, "gguf-lora", tmp_path / "gguf-lora", gguf_type="f32")  # verifies every pair itself
    assert [p.name for p in res.path.iterdir()] == ["adapter.gguf"]
    reader = gguf.GGUFReader(str(res.path / "adapter.gguf"))
    meta = {k: reader.fields[k].contents() for k in ("general.type", "adapter.type", "adapter.lora.alpha",
                                                      "general.architecture")}
    arch = {"llama3": "llama", "mistral": "llama"}.get(name, name)
    assert meta == {"general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 8.0,
                    "general.architecture": arch}  # build_lora_run: r 4, lora_alpha 8
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * 7 * 2  # q k v o gate up down, 2 layers, A and B each
    base = load_model(model_dir)
    merged = PeftModel.from_pretrained(load_model(model_dir), str(run / "model")).merge_and_unload()
    heads = {"attn_q": base.config.num_attention_heads, "attn_k": base.config.num_key_value_heads}
    for gguf_name, hf_name in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
        a, b = tensors[f"blk.1.{gguf_name}.weight.lora_a"], tensors[f"blk.1.{gguf_name}.weight.lora_b"]
        if arch == "llama" and gguf_name in heads:  # undo llama.cpp's interleaved-RoPE row order
            n = heads[gguf_name]
            b = b.reshape(n, b.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(b.shape)
            assert not np.allclose(tensors[f"blk.1.{gguf_name}.weight.lora_b"], b)
        w0 = base.state_dict()[f"model.layers.1.self_attn.{hf_name}.weight"].numpy()
        w = merged.state_dict()[f"model.layers.1.self_attn.{hf_name}.weight"].numpy()
        assert np.allclose(w0 + (8.0 / a.shape[0]) * b @ a, w, atol=1e-6), gguf_name
