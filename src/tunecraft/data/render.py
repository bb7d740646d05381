"""Render examples exactly as training sees them: token ids plus the loss mask.

Chats are rendered with the model's own chat template (transformers compiles it in Jinja's
`ImmutableSandboxedEnvironment`, so a template cannot reach Python internals). The loss mask is
built from *segments*: the template is rendered for growing prefixes of the conversation, and
the text each assistant turn adds (its content and its end-of-turn token) bears loss. Each
segment is tokenized on its own and the ids are concatenated: this is exactly what happens at
inference, where the prompt (ending in the generation prompt) is tokenized alone and the answer
is generated token by token after it. Raw text bears loss everywhere.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunecraft.data.schema import Example, Message
from tunecraft.errors import DataError

IGNORE = -100  # label value that bears no loss (torch's cross_entropy ignore_index)
TemplateMode = Literal["auto", "chat", "raw"]

# Used for instruction rows when the model has no chat template (Alpaca layout).
RAW_INSTRUCTION = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token bears no loss, else the token id itself
    path: str = ""
    line: int = 0
    truncated: int = 0  # tokens cut by max_length

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair as training sees it: prompt + chosen and prompt + rejected.

    Both sequences start with the same prompt tokens (each rendered exactly as a chat would be,
    see `preference_sides`); only the answers bear loss. `ref` holds the reference model's summed
    log-probabilities of the two answers (chosen, rejected) once training computed them.
    """

    chosen: TokenizedExample
    rejected: TokenizedExample
    ref: tuple[float, float] | None = None

    @property
    def path(self) -> str:
        return self.chosen.path

    @property
    def line(self) -> int:
        return self.chosen.line

    @property
    def sequences(self) -> tuple[TokenizedExample, TokenizedExample]:
        return self.chosen, self.rejected


def sequences(items: Sequence[TokenizedExample] | Sequence[TokenizedPair]) -> Sequence[TokenizedExample]:
    """Every token sequence of a tokenized set (a pair is two), for counts and lengths. Raw text
    read from the on-disk cache (a `tokenstore.TokenView`) is returned as it is: it holds no
    pairs, and a list of it would hold the whole corpus in memory."""
    from tunecraft.data.tokenstore import TokenView  # tokenstore builds on this module

    if isinstance(items, TokenView):
        return items
    return [s for item in items for s in (item.sequences if isinstance(item, TokenizedPair) else (item,))]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat(tokenizer: Any, mode: TemplateMode) -> bool:
    if mode == "chat":
        if not has_chat_template(tokenizer):
            raise DataError(
                "data.template=chat, but the model's tokenizer has no chat template. "
                "Use data.template=raw, or a chat model."
            )
        return True
    return mode == "auto" and has_chat_template(tokenizer)


def preference_sides(example: Example) -> tuple[Example, Example]:
    """A preference pair as two chats: prompt + chosen and prompt + rejected.

    Assistant turns inside the prompt bear no loss (weight 0): only the answers are compared.
    """
    assert example.format == "preference", example.format
    prompt = tuple(Message(m.role, m.content, 0 if m.role == "assistant" else 1) for m in example.messages)

    def side(answer: tuple[Message, ...]) -> Example:
        return Example("chat", example.path, example.line, messages=prompt + answer)

    return side(example.chosen), side(example.rejected)


def to_messages(example: Example, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The example as chat messages (prompt/completion and instruction become one exchange;
    a preference pair becomes its prompt and preferred answer)."""
    if example.format == "preference":
        return to_messages(preference_sides(example)[0], system_prompt)
    if example.format == "chat":
        msgs = [_message_dict(m) for m in example.messages]
    elif example.format == "prompt_completion":
        msgs = [
            {"role": "user", "content": example.prompt, "weight": 1},
            {"role": "assistant", "content": example.completion, "weight": 1},
        ]
    elif example.format == "instruction":
        user = example.instruction if not example.input else f"{example.instruction}\n\n{example.input}"
        msgs = [
            {"role": "user", "content": user, "weight": 1},
            {"role": "assistant", "content": example.output, "weight": 1},
        ]
    else:
        raise ValueError("raw text has no chat form")
    if system_prompt and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt, "weight": 1})
    return msgs


_TOOL_FIELDS = ("tool_calls", "tool_call_id", "name")


def template_message(role: str, content: str, calls: list[dict[str, Any]] | None = None, tool_call_id: str = "",
                     name: str = "") -> dict[str, Any]:
    """A message as chat templates take it, for training and serving alike: an assistant's tool
    calls (arguments as objects), a tool result's call id and function name."""
    out: dict[str, Any] = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = calls
    if tool_call_id:
        out["tool_call_id"] = tool_call_id
    if name and role == "tool":
        out["name"] = name
    return out


def _message_dict(m: Message) -> dict[str, Any]:
    return {**template_message(m.role, m.content, m.calls(), m.tool_call_id, m.name), "weight": m.weight}


def _render(tokenizer: Any, messages: list[dict[str, Any]], gen_prompt: bool,
            tools: list[dict[str, Any]] | None = None) -> str:
    plain = [{k: m[k] for k in ("role", "content", *_TOOL_FIELDS) if m.get(k) is not None} for m in messages]
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen_prompt, **extra)


def check_tools_render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                        where: str) -> None:
    """A template that drops tool calls or definitions would train the model on turns without
    them: refuse, naming what is missing."""
    calls = [c["function"]["name"] for m in messages for c in m.get("tool_calls", [])]
    if not calls and not tools:
        return
    text = _render(tokenizer, messages, gen_prompt=False, tools=tools)
    missing = [n for n in calls if n not in text]
    if tools and not any(t["function"]["name"] in text for t in tools):
        missing.append("the tool definitions")
    if missing:
        raise DataError(
            f"{where}: the model's chat template does not render tool calling ({', '.join(dict.fromkeys(missing))} "
            "missing from the rendered text), so the calls cannot train; use a model whose template "
            "supports tools (Llama 3.1+, Qwen2.5, Mistral), or write the calls into the content"
        )


_PROBE = "tunecraft-probe-answer"
_END_CACHE: weakref.WeakKeyDictionary[Any, tuple[str | None, str | None]] = weakref.WeakKeyDictionary()


def end_of_turn(tokenizer: Any) -> str | None:
    """The token that closes an assistant turn in the model's chat template: ChatML's
    `<|im_end|>`, Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`, Mistral's `</s>`.

    Found by rendering a probe turn: the first special token the template writes after the
    answer. It need not be the tokenizer's EOS (Gemma's EOS is `<eos>`, a Llama 3 base
    tokenizer's `<|end_of_text|>`), and it is what the model must learn to write and what
    generation stops at. The EOS when the template writes no special token (or there is none).
    """
    template = getattr(tokenizer, "chat_template", None)
    cached = None
    with contextlib.suppress(TypeError):
        cached = _END_CACHE.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    found = _probe_end_of_turn(tokenizer) if template else None
    found = found or tokenizer.eos_token
    with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
        _END_CACHE[tokenizer] = (template, found)
    return found


def _probe_end_of_turn(tokenizer: Any) -> str | None:
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses the probe (Jinja raise_exception): keep the EOS
        return None
    if not isinstance(text, str) or _PROBE not in text:
        return None
    tail = text[text.rindex(_PROBE) + len(_PROBE):]
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials |= {t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()
                 if getattr(t, "special", False)}
    hits = [(tail.index(t), -len(t), t) for t in specials if t and t in tail]
    return min(hits)[2] if hits else None


def end_token_ids(tokenizer: Any) -> list[int]:
    """Ids generation stops at, from the tokenizer alone: the end of turn, then the EOS."""
    ids: list[int] = []
    for token in (end_of_turn(tokenizer), tokenizer.eos_token):
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid >= 0 and tid not in ids:
            ids.append(tid)
    return ids


def _split_at_end_token(text: str, end_token: str | None) -> tuple[str, str]:
    """Split an assistant segment after its end-of-turn token: (loss part, trailing part).

    ChatML emits `<|im_end|>\\n` (Gemma `<end_of_turn>\\n`); the newline after the end token is never
    generated (generation stops at the end token), so it bears no loss.
    """
    if end_token and end_token in text:
        cut = text.rindex(end_token) + len(end_token)
        return text[:cut], text[cut:]
    return text, ""


def chat_segments(
    tokenizer: Any, messages: list[dict[str, Any]], where: str = "", tools: list[dict[str, Any]] | None = None
) -> list[tuple[str, bool]]:
    """(text, bears_loss) segments whose concatenation is the rendered conversation. An
    assistant turn's segment is everything the template writes for it after the generation
    prompt: its text, its tool calls, its end-of-turn token; tool results bear no loss."""
    check_tools_render(tokenizer, messages, tools, where)
    end_token = end_of_turn(tokenizer)
    segments: list[tuple[str, bool]] = []
    done = ""  # rendered text covered by segments so far
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], gen_prompt=True, tools=tools)
        full = _render(tokenizer, messages[: i + 1], gen_prompt=False, tools=tools)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(
                f"{where}: the chat template does not render conversations prefix-stably "
                "(a later turn changes how an earlier one is rendered), so the loss mask cannot "
                "be derived exactly. Use single-turn examples or a model with a standard template."
            )
        segments.append((prompt[len(done) :], False))
        answer, tail = _split_at_end_token(full[len(prompt) :], end_token)
        segments.append((answer, msg.get("weight", 1) != 0))
        if tail:
            segments.append((tail, False))
        done = full
    rest = _render(tokenizer, messages, gen_prompt=False, tools=tools)
    if rest.startswith(done) and len(rest) > len(done):
        segments.append((rest[len(done) :], False))
    return [(text, loss) for text, loss in segments if text]


def raw_segments(tokenizer: Any, example: Example) -> list[tuple[str, bool]]:
    """Templates for models without a chat template; an end token closes each completion."""
    eos = tokenizer.eos_token or ""
    if example.format == "text":
        return [(example.text + eos, True)]
    if example.format == "prompt_completion":
        return [(example.prompt, False), (example.completion + eos, True)]
    if example.format == "instruction":
        input_block = f"### Input:\n{example.input}\n\n" if example.input else ""
        head = RAW_INSTRUCTION.format(instruction=example.instruction, input_block=input_block)
        return [(head, False), (example.output + eos, True)]
    # A chat file with a model that has no template: plain "role: content" lines.
    segments: list[tuple[str, bool]] = []
    for m in example.messages:
        if m.role == "assistant":
            calls = ("\n" if m.content else "") + m.tool_calls if m.tool_calls else ""
            segments.append(("assistant: ", False))
            segments.append((m.content + calls + eos, m.weight != 0))
            segments.append(("\n", False))
        else:
            segments.append((f"{m.role}: {m.content}\n", False))
    return segments


def segments_for(
    example: Example, tokenizer: Any, mode: TemplateMode = "auto", system_prompt: str | None = None
) -> list[tuple[str, bool]]:
    where = f"{example.path}:{example.line}"
    if example.format == "text":
        return raw_segments(tokenizer, example)
    if use_chat(tokenizer, mode):
        tools = json.loads(example.tools) if example.tools else None
        return chat_segments(tokenizer, to_messages(example, system_prompt), where, tools)
    return raw_segments(tokenizer, example)


def _bos_prefix(tokenizer: Any, first_text: str) -> list[int]:
    """The BOS id when the tokenizer adds one by itself and the template did not write it."""
    bos = tokenizer.bos_token
    if bos is None or tokenizer.bos_token_id is None or first_text.startswith(bos):
        return []
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if probe and probe[0] == tokenizer.bos_token_id else []


def tokenize_texts(tokenizer: Any, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of raw-text examples, exactly as `tokenize_example` makes them untruncated,
    in one call of the tokenizer's batch API (a fast tokenizer encodes the batch in parallel,
    and per-call overhead is paid once): how a large corpus is tokenized (data.tokenstore)."""
    assert all(e.format == "text" for e in examples), "tokenize_texts takes raw-text examples"
    texts = [raw_segments(tokenizer, e)[0][0] for e in examples]
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    bos = _bos_prefix(tokenizer, "")  # what the tokenizer would prepend; a text opening with BOS gets none
    out = []
    for text, ids in zip(texts, encoded, strict=True):
        head = [] if tokenizer.bos_token is not None and text.startswith(tokenizer.bos_token) else bos
        out.append((head + ids, [IGNORE] * len(head) + ids))
    return out


def tokenize_segments(
    tokenizer: Any, segments: list[tuple[str, bool]], max_length: int | None = None
) -> tuple[list[int], list[int], int]:
    """Token ids and labels for segments; returns (ids, labels, tokens cut by max_length)."""
    ids: list[int] = _bos_prefix(tokenizer, segments[0][0]) if segments else []
    labels: list[int] = [IGNORE] * len(ids)
    for text, loss in segments:
        seg_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(seg_ids)
        labels.extend(seg_ids if loss else [IGNORE] * len(seg_ids))
    cut = 0
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels, cut


def tokenize_example(
    example: Example,
    tokenizer: Any,
    max_length: int | None = None,
    mode: TemplateMode = "auto",
    system_prompt: str | None = None,
) -> TokenizedExample:
    """One example -> token ids and labels, truncated on the right to `max_length` (a preference
    pair: its chosen side; `tokenize_pair` gives both)."""
    if example.format == "preference":
        example = preference_sides(example)[0]
    segments = segments_for(example, tokenizer, mode, system_prompt)
    ids, labels, cut = tokenize_segments(tokenizer, segments, max_length)
    return TokenizedExample(ids, labels, example.path, example.line, cut)


def tokenize_pair(
    example: Example,
    tokenizer: Any,
    max_length: int | None = None,
    mode: TemplateMode = "auto",
    system_prompt: str | None = None,
) -> TokenizedPair:
    """A preference pair -> its two sequences, each rendered and truncated like any example."""
    chosen, rejected = preference_sides(example)
    return TokenizedPair(tokenize_example(chosen, tokenizer, max_length, mode, system_prompt),
                         tokenize_example(rejected, tokenizer, max_length, mode, system_prompt))


def tokenize_sequences(
    example: Example,
    tokenizer: Any,
    max_length: int | None = None,
    mode: TemplateMode = "auto",
    system_prompt: str | None = None,
) -> list[TokenizedExample]:
    """The token sequences training runs for `example`: one, or two for a preference pair."""
    if example.format == "preference":
        return list(tokenize_pair(example, tokenizer, max_length, mode, system_prompt).sequences)
    return [tokenize_example(example, tokenizer, max_length, mode, system_prompt)]


def prompt_ids(
    tokenizer: Any, messages: list[dict[str, Any]], mode: TemplateMode = "auto",
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of a generation prompt, tokenized exactly as training tokenized prompts
    (`tools`: definitions the template renders; refused where it would drop them)."""
    if use_chat(tokenizer, mode):
        if tools:
            check_tools_render(tokenizer, messages, tools, "tools")
        text = _render(tokenizer, messages, gen_prompt=True, tools=tools)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    ids, _, _ = tokenize_segments(tokenizer, [(text, False)])
    return ids
