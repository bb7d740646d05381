"""Tiny random models and tokenizers built from a config, for fast CPU tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

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
