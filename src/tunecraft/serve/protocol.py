"""OpenAI API request bodies and error objects (the subset tunecraft serves).

Unknown fields are ignored rather than refused: clients send many optional OpenAI fields
(`user`, `presence_penalty`, ...) that do not change what a small local model can do.

Every value the engine would choke on is refused here, as a 400 naming the field: seeds torch
cannot take, and text that is not valid Unicode (JSON allows a lone surrogate such as "\\ud800";
no tokenizer can encode it). Limits that are server settings (max_tokens, prompts per request,
stop strings) are checked by the app, which knows them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tunecraft.serve.engine import SEED_MAX, SEED_MIN  # what torch's generator accepts


def _valid_unicode(text: str) -> str:
    """Refuse lone surrogates: they survive JSON parsing but cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid Unicode: a lone surrogate {text[exc.start]!r} at position {exc.start}; "
            "send UTF-8 text (escape characters outside the BMP as surrogate pairs)"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ContentPart(_Body):
    type: str
    text: Text | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[ContentPart] | None = ""
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text or "" for p in self.content if p.type == "text")  # as training joins them


class _Sampling(_Body):
    model: Text
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: int = Field(1, ge=1, le=1, description="only n=1 is served")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM extension: generate past the end-of-turn token

    def stop_list(self) -> tuple[str, ...]:
        """Every stop string as sent (the app refuses too many or too long ones; none is dropped)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # tunecraft extensions for closed-label models (`/v1/models` shows a model's label set):
    # false answers freely instead of with a label of the set; label_reject false skips the
    # reject threshold (the model's own most probable label).
    label_constraint: bool = True
    label_reject: bool = True
    # Tool calling for models whose chat template renders tools: "auto" (the default when tools
    # are given) lets the model call one; "none" renders no tools. Forcing a call ("required", or
    # one named function) needs constrained decoding of the call and is refused, not faked.
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none"] | dict[str, Any] | str | None = None

    def logprobs_k(self) -> int | None:
        """Top alternatives per token for SamplingParams (None: no log-probs asked)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
