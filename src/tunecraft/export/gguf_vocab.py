"""A tokenizer's vocabulary as GGUF `tokenizer.ggml.*` fields, in the two kinds llama.cpp runs.

- Byte-level BPE (GPT-2 style: SmolLM, Qwen2, Llama 3) -> model `gpt2`: tokens spelled in the
  byte alphabet, merges, and `pre`, the name of the split rules llama.cpp re-implements by name.
- SentencePiece-style BPE ("▁" marks a word start: Llama 2, Mistral, Gemma) -> model `llama`:
  tokens, scores and token types. llama.cpp's SentencePiece tokenizer merges the adjacent pair
  whose result has the highest score, so each merged token scores minus its merge rank, which
  replays the BPE merge order. The merges are written too: llama.cpp ignores them for this model
  while transformers' GGUF reader rebuilds the exact BPE from them (without them it guesses the
  merges from the scores). `add_space_prefix` says whether the tokenizer puts a "▁" before the
  first word (a "dummy prefix"), which llama.cpp reads and transformers' reader does not.

Everything comes from the tokenizer's own `tokenizer.json`; nothing is guessed from token text
except the `<0xNN>` byte-fallback tokens, which SentencePiece spells that way by definition.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tunecraft.export.gguf_arch import GgufExportError

WORD_MARK = "\u2581"  # "▁", SentencePiece's word-start mark

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass
class GgufVocab:
    """What the writer puts under `tokenizer.ggml.*`."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str | None = None  # gpt2 only: llama.cpp's name for the split rules
    scores: list[float] = field(default_factory=list)  # llama only
    space_prefix: str | None = None  # llama only: where "▁" is prepended: "never" | "first" | "always"


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's `tokenizer.json` as a dict (its single source of truth)."""
    return json.loads(tokenizer.backend_tokenizer.to_str())


def is_sentencepiece_style(spec: dict[str, Any]) -> bool:
    """Whether words are marked with "▁" (SentencePiece-style) rather than spelled as bytes."""
    parts = _parts(spec.get("pre_tokenizer")) + _parts(spec.get("normalizer"))
    marks = [p for p in parts if p.get("type") == "Metaspace" or _replaces_space_with_mark(p)]
    return bool(marks)


def build_vocab(tokenizer: Any, vocab_size: int) -> GgufVocab:
    """The GGUF vocabulary of `tokenizer`, padded to the model's `vocab_size` embedding rows."""
    spec = tokenizer_spec(tokenizer)
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise GgufExportError(f"a {model.get('type')} vocabulary (supported: BPE, byte-level or SentencePiece-style)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tokens, types = _tokens_and_types(tokenizer, spec, vocab_size)
    if is_sentencepiece_style(spec):
        types = [BYTE if t == NORMAL and _BYTE_TOKEN.match(tok) else t for tok, t in zip(tokens, types)]
        if tokenizer.unk_token_id is not None:  # SentencePiece's own type for it (byte-level: CONTROL)
            types[tokenizer.unk_token_id] = UNKNOWN
        return GgufVocab("llama", tokens, types, merges, scores=_merge_scores(tokens, merges),
                         space_prefix=space_prefix_scheme(spec))
    return GgufVocab("gpt2", tokens, types, merges, pre=pre_tokenizer_name(spec))


def tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """The byte-level fields as a dict: tokens, types, merges and the pre-tokenizer name."""
    vocab = build_vocab(tokenizer, vocab_size)
    return {"pre": vocab.pre, "tokens": vocab.tokens, "types": vocab.types, "merges": vocab.merges}


def _tokens_and_types(tokenizer: Any, spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    n = len(tokenizer)
    if n > vocab_size:
        raise GgufExportError(f"the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i >= n:  # embedding rows without a token (vocab padded to a multiple)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(tokenizer.convert_ids_to_tokens(i))
        if i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            types.append(NORMAL)
    return tokens, types


def _merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the merge that first forms each token (0 for tokens no merge forms):
    llama.cpp then merges in BPE's order, as SentencePiece's own BPE scores do."""
    rank: dict[str, int] = {}
    for k, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        rank.setdefault(left + right, k)
    return [-float(rank[t] + 1) if t in rank else 0.0 for t in tokens]


# ----------------------------------------------------------------------------- split rules


def _parts(component: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not component:
        return []
    key = "pretokenizers" if "pretokenizers" in component else "normalizers"
    return list(component.get(key, [])) if component.get("type") == "Sequence" else [component]


def _replaces_space_with_mark(part: dict[str, Any]) -> bool:
    return part.get("type") == "Replace" and (part.get("pattern") or {}).get("String") == " " \
        and part.get("content") == WORD_MARK


def space_prefix_scheme(spec: dict[str, Any]) -> str:
    """Where the tokenizer prepends "▁" (SentencePiece's dummy prefix): "never"; "first" (only
    before text at the very start of the input); "always" (before every text piece, also after
    special tokens; a normalizer's Prepend acts so since special tokens are split off first)."""
    for part in _parts(spec.get("pre_tokenizer")):
        if part.get("type") == "Metaspace":
            return str(part.get("prepend_scheme", "always" if part.get("add_prefix_space", True) else "never"))
    prepends = any(p.get("type") == "Prepend" and p.get("prepend") == WORD_MARK for p in _parts(spec.get("normalizer")))
    return "always" if prepends else "never"


def pre_tokenizer_name(spec: dict[str, Any]) -> str:
    """llama.cpp's name for a byte-level tokenizer's split rules (it re-implements each by name)."""
    parts = _parts(spec.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_level[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's split regex
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # GPT-2's regex after splitting every digit (SmolLM's tokenizer)
    if kinds == ["Split", "ByteLevel"] and not byte_level[0].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        for name, split in _known_splits().items():  # Qwen2's, Llama 3's split regex
            if pattern == split:
                return name
    raise GgufExportError(
        f"the tokenizer's pre-tokenizer {kinds}, which has no llama.cpp equivalent this writer knows "
        "(supported: byte-level GPT-2 style, optionally with single-digit splitting; Qwen2's and "
        "Llama 3's split rules; SentencePiece-style '▁' word marks)"
    )


def _known_splits() -> dict[str, str]:
    """llama.cpp pre-tokenizer names -> the split regex transformers' GGUF reader applies for them:
    a file names its regex, and the reader must split text exactly as the tokenizer did."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # older transformers: the names its reader knows are the same
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        return {"qwen2": PRETOKENIZE_REGEX}
    return {name: GGUF_PRE_TOKENIZER_SPLITS[name] for name in ("qwen2", "llama-bpe") if name in GGUF_PRE_TOKENIZER_SPLITS}


def adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with special tokens puts BOS first (llama.cpp's `add_bos_token`)."""
    bos = tokenizer.bos_token_id
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bos is not None and bool(probe) and probe[0] == bos
