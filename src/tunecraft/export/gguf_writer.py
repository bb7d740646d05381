"""Write a Hugging Face model (Llama, Mistral, Qwen2, Gemma 3) as a GGUF file for llama.cpp and Ollama.

The file holds the architecture's metadata (`gguf_arch`), the vocabulary and chat template
(`gguf_vocab`: `tokenizer.ggml.*`, `tokenizer.chat_template`) and the weights in llama.cpp's
names and layouts (`gguf_tensors`). What the file cannot say faithfully is refused up front,
every reason at once, with the way out (a merged export and llama.cpp's own converter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunecraft.export.gguf_arch import ARCHS, GgufExportError, arch_spec, unsupported, write_hparams
from tunecraft.export.gguf_tensors import GgufType, model_tensors, permute_for_rope
from tunecraft.export.gguf_vocab import GgufVocab, adds_bos, build_vocab, tokenizer_fields

__all__ = ["GgufExportError", "GgufType", "check_supported", "permute_for_rope", "tokenizer_fields", "write_gguf"]

REFUSAL_HINT = "Export --format merged instead and convert it with llama.cpp's convert_hf_to_gguf.py."


def vocab_problems(config: Any, vocab: GgufVocab) -> list[str]:
    """Where transformers' GGUF reader would rebuild this vocabulary differently from the run's.

    Its reader picks the SentencePiece tokenizer class by architecture (`gemma3`: no dummy
    prefix; otherwise "▁" before the input's first word only) and reads no flag for it, so a
    vocabulary with another prefix rule could not be verified by reloading the file.
    """
    if vocab.model != "llama" or config.model_type not in ARCHS:
        return []
    expected = arch_spec(config).reader_space_prefix
    if vocab.space_prefix == expected:
        return []
    return [f"a SentencePiece-style vocabulary that prepends '▁' {_PREFIX_WORDS[vocab.space_prefix or 'never']}, "
            f"where transformers' GGUF reader rebuilds {arch_spec(config).gguf} vocabularies with "
            f"'▁' {_PREFIX_WORDS[expected]} (the export could not be verified)"]


_PREFIX_WORDS = {"never": "never", "first": "before the first word only",
                 "always": "before every piece of text (also after special tokens)"}


def check_supported(config: Any, vocab: GgufVocab | None = None) -> None:
    """Raise with every reason the model (and its vocabulary) cannot be written faithfully."""
    _refuse(unsupported(config) + (vocab_problems(config, vocab) if vocab is not None else []))


def _refuse(problems: list[str]) -> None:
    if problems:
        raise GgufExportError("GGUF export cannot represent this model: " + "; ".join(problems) + ". " + REFUSAL_HINT)


def checked_vocab(config: Any, tokenizer: Any) -> GgufVocab:
    """The model's vocabulary, after checking model and vocabulary together (all reasons at once)."""
    problems = unsupported(config)
    vocab = None
    if config.model_type in ARCHS:  # the vocabulary rules depend on the architecture
        try:
            vocab = build_vocab(tokenizer, config.vocab_size)
        except GgufExportError as exc:
            problems.append(str(exc))
        else:
            problems += vocab_problems(config, vocab)
    _refuse(problems)
    assert vocab is not None
    return vocab


def _write_vocab(writer: Any, vocab: GgufVocab, tokenizer: Any, eos_token_id: int) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.model == "llama":
        writer.add_token_scores(vocab.scores)
        writer.add_add_space_prefix(vocab.space_prefix != "never")
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(int(tokenizer.bos_token_id))
    # The end-of-turn token is the one generation must stop at; llama.cpp reads it as EOS/EOT.
    writer.add_eos_token_id(int(eos_token_id))
    writer.add_eot_token_id(int(eos_token_id))
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(int(tokenizer.unk_token_id))
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(int(tokenizer.pad_token_id))
    writer.add_add_bos_token(adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    gtype: GgufType,
    name: str,
    eos_token_id: int,
) -> None:
    """Write `model` (float weights) + `tokenizer` (+ chat template) to `path`, or refuse with why."""
    import gguf

    cfg = model.config
    vocab = checked_vocab(cfg, tokenizer)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gtype]
    tensors = model_tensors(model, gtype)

    writer = gguf.GGUFWriter(str(path), arch=arch_spec(cfg).gguf)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    write_hparams(writer, cfg)
    writer.add_file_type(file_type)
    _write_vocab(writer, vocab, tokenizer, eos_token_id)
    for gname, data, raw in tensors:
        writer.add_tensor(gname, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
