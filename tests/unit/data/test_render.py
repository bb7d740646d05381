"""The loss mask: decode the loss-bearing spans of every format and compare with the answer text.

Each assistant turn / completion must bear loss on exactly its content plus the end-of-turn token
`<|im_end|>` (never the newline after it, never a prompt, system message or weight-0 turn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
from tiny import CHATML, build_tokenizer

from tunecraft.data.render import (
    IGNORE,
    TokenizedExample,
    chat_segments,
    prompt_ids,
    to_messages,
    tokenize_example,
)
from tunecraft.data.schema import Example, Message
from tunecraft.errors import DataError

END = "<|im_end|>"


def loss_spans(tok: TokenizedExample, tokenizer: Any) -> list[str]:
    """Decoded runs of consecutive loss-bearing tokens."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(tok.input_ids, tok.labels):
        bears = label != IGNORE
        if bears:
            assert label == token  # labels are the ids themselves where they bear loss
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = bears
    return [tokenizer.decode(s, skip_special_tokens=False) for s in spans]


def decode(tok: TokenizedExample, tokenizer: Any) -> str:
    return tokenizer.decode(tok.input_ids, skip_special_tokens=False)


def chat(*messages: tuple[str, str] | tuple[str, str, int]) -> Example:
    return Example("chat", "f.jsonl", 1, messages=tuple(Message(*m) for m in messages))


MULTI_TURN = chat(
    ("system", "You are a support agent."),
    ("user", "hi"),
    ("assistant", "Hello! How can I help?", 0),
    ("user", "I lost my card."),
    ("assistant", "I have blocked it."),
    ("user", "Thanks!"),
    ("assistant", "You are welcome."),
)
PROMPT_COMPLETION = Example("prompt_completion", "f", 1, prompt="Classify: my card never arrived",
                            completion="card_arrival")
WITH_INPUT = Example("instruction", "f", 1, instruction="Translate to French.", input="Good morning",
                     output="Bonjour")
NO_INPUT = Example("instruction", "f", 1, instruction="Name the capital of Italy.", output="Rome")
TEXT = Example("text", "f", 1, text="Acme Bank cards are contactless.")


@pytest.fixture(scope="module")
def no_template_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tunecraft.models.load import load_tokenizer

    out = tmp_path_factory.mktemp("no-template")
    build_tokenizer(out, chat_template=None)
    return load_tokenizer(out)


def full_template_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    ids = tokenizer.apply_chat_template(plain, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


# ---- chat template (the tiny ChatML tokenizer) ------------------------------------------------

def test_multi_turn_chat_masks_weight_0_turns_system_and_user(tiny_tokenizer: Any) -> None:
    tok = tokenize_example(MULTI_TURN, tiny_tokenizer)
    assert loss_spans(tok, tiny_tokenizer) == [f"I have blocked it.{END}", f"You are welcome.{END}"]
    text = decode(tok, tiny_tokenizer)
    assert "<|im_start|>system\nYou are a support agent.<|im_end|>\n" in text
    assert "Hello! How can I help?" in text  # a weight-0 turn is context, still in the input


def test_every_assistant_turn_with_weight_1_bears_loss(tiny_tokenizer: Any) -> None:
    example = chat(("user", "a"), ("assistant", "first"), ("user", "b"), ("assistant", "second"))
    tok = tokenize_example(example, tiny_tokenizer)
    assert loss_spans(tok, tiny_tokenizer) == [f"first{END}", f"second{END}"]


def test_system_message_and_default_system_prompt_bear_no_loss(tiny_tokenizer: Any) -> None:
    example = chat(("user", "hi"), ("assistant", "hello"))
    tok = tokenize_example(example, tiny_tokenizer)
    assert loss_spans(tok, tiny_tokenizer) == [f"hello{END}"]
    # The tiny template adds its default system prompt when there is none.
    assert decode(tok, tiny_tokenizer).startswith("<|im_start|>system\nYou are a helpful assistant.")
    with_system = tokenize_example(example, tiny_tokenizer, system_prompt="Be brief.")
    assert "Be brief." in decode(with_system, tiny_tokenizer)
    assert loss_spans(with_system, tiny_tokenizer) == [f"hello{END}"]


def test_prompt_completion(tiny_tokenizer: Any) -> None:
    tok = tokenize_example(PROMPT_COMPLETION, tiny_tokenizer)
    assert loss_spans(tok, tiny_tokenizer) == [f"card_arrival{END}"]
    assert "<|im_start|>user\nClassify: my card never arrived<|im_end|>" in decode(tok, tiny_tokenizer)


def test_instruction_with_and_without_input(tiny_tokenizer: Any) -> None:
    with_input = tokenize_example(WITH_INPUT, tiny_tokenizer)
    assert loss_spans(with_input, tiny_tokenizer) == [f"Bonjour{END}"]
    assert "<|im_start|>user\nTranslate to French.\n\nGood morning<|im_end|>" in decode(with_input, tiny_tokenizer)
    without = tokenize_example(NO_INPUT, tiny_tokenizer)
    assert loss_spans(without, tiny_tokenizer) == [f"Rome{END}"]
    assert "<|im_start|>user\nName the capital of Italy.<|im_end|>" in decode(without, tiny_tokenizer)


def test_raw_text_bears_loss_everywhere_and_ends_with_eos(tiny_tokenizer: Any) -> None:
    tok = tokenize_example(TEXT, tiny_tokenizer)
    assert all(label != IGNORE for label in tok.labels)
    assert loss_spans(tok, tiny_tokenizer) == [f"Acme Bank cards are contactless.{END}"]


def test_trailing_user_turn_is_context(tiny_tokenizer: Any) -> None:
    example = chat(("user", "q"), ("assistant", "a"), ("user", "follow-up"))
    tok = tokenize_example(example, tiny_tokenizer)
    assert loss_spans(tok, tiny_tokenizer) == [f"a{END}"]
    assert decode(tok, tiny_tokenizer).endswith("<|im_start|>user\nfollow-up<|im_end|>\n")


@pytest.mark.parametrize("example", [MULTI_TURN, PROMPT_COMPLETION, WITH_INPUT, NO_INPUT],
                         ids=["multi_turn", "prompt_completion", "with_input", "no_input"])
def test_segment_ids_equal_the_tokenizers_own_full_tokenization(tiny_tokenizer: Any, example: Example) -> None:
    tok = tokenize_example(example, tiny_tokenizer)
    assert tok.input_ids == full_template_ids(tiny_tokenizer, to_messages(example))


def test_segments_concatenate_to_the_rendered_conversation(tiny_tokenizer: Any) -> None:
    messages = to_messages(MULTI_TURN)
    segments = chat_segments(tiny_tokenizer, messages)
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False
    )
    assert "".join(text for text, _ in segments) == rendered
    assert [text for text, loss in segments if loss] == [f"I have blocked it.{END}", f"You are welcome.{END}"]


def test_prompt_ids_are_the_training_prefix(tiny_tokenizer: Any) -> None:
    tok = tokenize_example(PROMPT_COMPLETION, tiny_tokenizer)
    ids = prompt_ids(tiny_tokenizer, to_messages(PROMPT_COMPLETION)[:-1])
    first_loss = next(i for i, label in enumerate(tok.labels) if label != IGNORE)
    assert ids == tok.input_ids[:first_loss]


# ---- truncation ---------------------------------------------------------------------------------

def test_truncation_cuts_on_the_right_and_counts_the_cut(tiny_tokenizer: Any) -> None:
    full = tokenize_example(MULTI_TURN, tiny_tokenizer)
    cut = tokenize_example(MULTI_TURN, tiny_tokenizer, max_length=20)
    assert cut.input_ids == full.input_ids[:20] and cut.labels == full.labels[:20]
    assert cut.n_tokens == 20 and cut.truncated == full.n_tokens - 20
    same = tokenize_example(MULTI_TURN, tiny_tokenizer, max_length=full.n_tokens)
    assert same.truncated == 0 and same.input_ids == full.input_ids


# ---- no chat template ---------------------------------------------------------------------------

def test_no_template_prompt_completion(no_template_tokenizer: Any) -> None:
    tok = tokenize_example(PROMPT_COMPLETION, no_template_tokenizer)
    assert loss_spans(tok, no_template_tokenizer) == [f"card_arrival{END}"]
    assert decode(tok, no_template_tokenizer) == f"Classify: my card never arrivedcard_arrival{END}"


def test_no_template_instruction_uses_alpaca_layout(no_template_tokenizer: Any) -> None:
    with_input = tokenize_example(WITH_INPUT, no_template_tokenizer)
    assert decode(with_input, no_template_tokenizer) == (
        "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n"
        f"Bonjour{END}"
    )
    assert loss_spans(with_input, no_template_tokenizer) == [f"Bonjour{END}"]
    without = tokenize_example(NO_INPUT, no_template_tokenizer)
    assert "### Input" not in decode(without, no_template_tokenizer)
    assert loss_spans(without, no_template_tokenizer) == [f"Rome{END}"]


def test_no_template_chat_and_text(no_template_tokenizer: Any) -> None:
    tok = tokenize_example(MULTI_TURN, no_template_tokenizer)
    assert loss_spans(tok, no_template_tokenizer) == [f"I have blocked it.{END}", f"You are welcome.{END}"]
    assert decode(tok, no_template_tokenizer).startswith("system: You are a support agent.\nuser: hi\n")
    text = tokenize_example(TEXT, no_template_tokenizer)
    assert loss_spans(text, no_template_tokenizer) == [f"Acme Bank cards are contactless.{END}"]


def test_chat_mode_without_template_is_a_clear_error(no_template_tokenizer: Any) -> None:
    with pytest.raises(DataError, match="no chat template"):
        tokenize_example(PROMPT_COMPLETION, no_template_tokenizer, mode="chat")


def test_raw_mode_ignores_the_template(tiny_tokenizer: Any) -> None:
    tok = tokenize_example(PROMPT_COMPLETION, tiny_tokenizer, mode="raw")
    assert decode(tok, tiny_tokenizer) == f"Classify: my card never arrivedcard_arrival{END}"


# ---- sandbox ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% for m in messages %}{{ m.content.__class__.__base__ }}{% endfor %}",
        "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    ],
)
def test_malicious_template_cannot_reach_python_internals(
    tmp_path: Path, template: str
) -> None:
    tokenizer = build_tokenizer(tmp_path, chat_template=template + CHATML)
    with pytest.raises(jinja2.exceptions.SecurityError):
        tokenize_example(PROMPT_COMPLETION, tokenizer)


def test_non_prefix_stable_template_is_refused(tmp_path: Path) -> None:
    # Renders the number of messages first: every turn changes the text before it.
    template = "{{ messages | length }}" + CHATML
    tokenizer = build_tokenizer(tmp_path, chat_template=template)
    with pytest.raises(DataError, match="prefix-stably"):
        tokenize_example(PROMPT_COMPLETION, tokenizer)


# ---- the real default model ---------------------------------------------------------------------

@pytest.mark.smoke
def test_default_model_loss_spans_and_full_tokenization(default_tokenizer: Any) -> None:
    assert default_tokenizer.eos_token == END
    tok = tokenize_example(MULTI_TURN, default_tokenizer)
    assert loss_spans(tok, default_tokenizer) == [f"I have blocked it.{END}", f"You are welcome.{END}"]
    for example in (MULTI_TURN, PROMPT_COMPLETION, WITH_INPUT, NO_INPUT):
        tok = tokenize_example(example, default_tokenizer)
        assert tok.input_ids == full_template_ids(default_tokenizer, to_messages(example))
    assert loss_spans(tokenize_example(PROMPT_COMPLETION, default_tokenizer), default_tokenizer) == [
        f"card_arrival{END}"
    ]
    assert loss_spans(tokenize_example(WITH_INPUT, default_tokenizer), default_tokenizer) == [f"Bonjour{END}"]
    assert loss_spans(tokenize_example(NO_INPUT, default_tokenizer), default_tokenizer) == [f"Rome{END}"]
