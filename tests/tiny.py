"""Tiny random models and tokenizers built from a config, for fast CPU tests (no downloads)."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ChatML with tool calling in Qwen2.5's layout (written for the tests): the definitions in the
# system turn, each call as <tool_call>{json}</tool_call> in the assistant turn, results as a
# user turn wrapped in <tool_response>.
CHATML_TOOLS = (
    "{% if tools %}{{ '<|im_start|>system\nYou may call these tools:\n' }}"
    "{% for t in tools %}{{ t | tojson }}{{ '\n' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{ '<|im_start|>assistant\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] %}{{ '<tool_call>' }}"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>' + message['content'] + '</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello how can i help you today? your order ships in two days.",
    "Your card has arrived. Please activate it in the app under Cards.",
    "refund request received; we will reply within 24 hours. Thanks!",
    "system user assistant: answer briefly and politely.",
    "0123456789 {}[]\":,. JSON intent label category",
] * 20


def build_tokenizer(out: Path, chat_template: str | None = CHATML, vocab_size: int = 320):
    """A byte-level BPE tokenizer with ChatML specials (trained on a fixed corpus: deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def build_model_dir(
    out: Path,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    chat_template: str | None = CHATML,
) -> Path:
    """A tiny random Llama (tied embeddings, like the default) with its tokenizer, saved to `out`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out, chat_template)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out), safe_serialization=True)
    return out


INTENTS = ["card_arrival", "refund", "transfer", "pin_reset", "balance", "lost_card"]
_OPENERS = ["hi", "hello", "hey there", "good morning", "excuse me", "quick question"]


def write_chat_data(path: Path, n: int, seed: int = 0) -> Path:
    """A small deterministic chat dataset: short user messages, JSON-ish intent answers."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            intent = rng.choice(INTENTS)
            user = f"{rng.choice(_OPENERS)}, about my {intent.replace('_', ' ')} (ticket {i})"
            answer = json.dumps({"intent": intent, "ticket": i})
            row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
            fh.write(json.dumps(row) + "\n")
    return path


def write_preference_data(path: Path, n: int, seed: int = 0, layout: str = "trl") -> Path:
    """Deterministic preference pairs: a user message, its intent preferred to another one.

    `layout`: "trl" ({"prompt", "chosen", "rejected"} strings) or "openai" (OpenAI's
    {"input": {"messages"}, "preferred_output", "non_preferred_output"}).
    """
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            intent = rng.choice(INTENTS)
            wrong = rng.choice([x for x in INTENTS if x != intent])
            user = f"{rng.choice(_OPENERS)}, about my {intent.replace('_', ' ')} (ticket {i})"
            if layout == "openai":
                row = {"input": {"messages": [{"role": "user", "content": user}]},
                       "preferred_output": [{"role": "assistant", "content": intent}],
                       "non_preferred_output": [{"role": "assistant", "content": wrong}]}
            else:
                row = {"prompt": user, "chosen": intent, "rejected": wrong}
            fh.write(json.dumps(row) + "\n")
    return path


# ----------------------------------------------------------------------------- model families
#
# Tiny random models in the shape of each family's real configuration (its architecture class,
# attention biases, tied or untied embeddings, head sizes, Gemma's norms and scalings), with a
# tokenizer of the family's kind and a chat template written for the tests in the family's turn
# layout. The end-of-turn token differs from the tokenizer's EOS where the family's does.

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('only user and assistant roles') }}{% endif %}"
    "{% endfor %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('system role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    end_of_turn: str  # what the template closes an assistant turn with
    sentencepiece: bool  # "▁"-prefixed words (Llama 2 / Mistral / Gemma) instead of byte-level BPE
    generation_eos: tuple[str, ...] = ()  # generation_config's eos ids, as tokens
    split: str | None = None  # byte-level: the family's split rules, by llama.cpp's name ("qwen2", "llama-bpe")


FAMILIES: dict[str, Family] = {
    "llama3": Family("llama3", LLAMA3_TEMPLATE, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                                 "<|end_header_id|>", "<|eot_id|>"),
                     bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>", end_of_turn="<|eot_id|>",
                     sentencepiece=False, generation_eos=("<|end_of_text|>", "<|eot_id|>"), split="llama-bpe"),
    "qwen2": Family("qwen2", CHATML_TOOLS, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None,
                    eos="<|im_end|>", pad="<|endoftext|>", end_of_turn="<|im_end|>", sentencepiece=False,
                    split="qwen2"),
    "mistral": Family("mistral", MISTRAL_TEMPLATE, ("<unk>", "<s>", "</s>"), bos="<s>", eos="</s>", pad="</s>",
                      end_of_turn="</s>", sentencepiece=True),
    "gemma3": Family("gemma3", GEMMA_TEMPLATE, ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                     bos="<bos>", eos="<eos>", pad="<pad>", end_of_turn="<end_of_turn>", sentencepiece=True,
                     generation_eos=("<eos>", "<end_of_turn>")),
}


def build_family_tokenizer(out: Path, family: Family, vocab_size: int = 360):
    """A deterministic tokenizer of the family's kind with its special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if family.sentencepiece:
        tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in family.specials else None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = sorted(set(string.printable.strip()) | {"\u2581"})  # every ASCII character has a token
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if family.split is not None:  # the family's own split regex, then bytes (as its tokenizer.json has)
            from tokenizers import Regex
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[family.split]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.specials),
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    extra = {"unk_token": "<unk>"} if "<unk>" in family.specials else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=family.bos, eos_token=family.eos,
                                   pad_token=family.pad, **extra)
    fast.chat_template = family.template
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast


def _family_config(family: Family, tok: Any, hidden: int, layers: int) -> Any:
    """The family's configuration class, shaped as its real checkpoints are (scaled down)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "max_position_embeddings": 512}
    shape = {"hidden_size": hidden, "intermediate_size": hidden * 3, "num_hidden_layers": layers,
             "num_attention_heads": 4, "num_key_value_heads": 2}
    if family.name == "llama3":  # Llama 3.2 1B/3B: tied embeddings, llama3 RoPE scaling
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 128}
        return LlamaConfig(**ids, **shape, tie_word_embeddings=True, rope_scaling=rope)
    if family.name == "qwen2":  # Qwen2.5 0.5B: q/k/v biases, tied embeddings
        return Qwen2Config(**ids, **shape, tie_word_embeddings=True, rope_theta=1000000.0,
                           use_sliding_window=False)
    if family.name == "mistral":  # Mistral 7B v0.3: untied, no sliding window
        return MistralConfig(**ids, **shape, tie_word_embeddings=False, sliding_window=None, rope_theta=1000000.0)
    # Gemma 3 1B: head_dim apart from hidden/heads, QK norms, local and global layers, tied embeddings
    return Gemma3TextConfig(**ids, **shape, head_dim=16, tie_word_embeddings=True, sliding_window=8,
                            query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"][:layers])


def build_family_model_dir(out: Path, name: str, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A tiny random model of family `name` (a key of FAMILIES) with its tokenizer, saved to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[name]
    tok = build_family_tokenizer(out, family)
    config = _family_config(family, tok, hidden, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    eos = [tok.convert_tokens_to_ids(t) for t in family.generation_eos] or tok.eos_token_id
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
