"""The generation engine shared by `serve`, `chat` and eval.

`load_target` turns a RUN_DIR or MODEL argument into a `LoadedModel`. LoRA runs over the same
base share one copy of the base in memory: the base is wrapped once in a `PeftModel`, each run's
adapter is added with `load_adapter`, and `LoadedModel.activate()` selects it under the base's
lock (plain base targets run with adapters disabled). Prompts are tokenized exactly as training
did (`tunecraft.data.render.prompt_ids` with the run's tokenizer, template mode and system prompt).

Generation is a plain KV-cached decode loop (rather than `model.generate`) so that one loop gives
batched left-padded decoding, per-row sampling seeds, stop strings, token streaming, log-probs and
cancellation between any two tokens.

A run with a closed label set (`RUN_DIR/labels.json`) answers chat prompts through `classify`:
every label's sequence is scored (`tunecraft.constrained`), the answer is the most probable
label (or one sampled from the set's distribution when temperature > 0), and the run's reject
threshold turns unsure answers into its reject label.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tunecraft.constrained import PRUNE_MARGIN, LabelTrie, build_trie, score_batched
from tunecraft.data.render import TemplateMode, end_token_ids, prompt_ids, tokenize_segments
from tunecraft.errors import TunecraftError
from tunecraft.models.facts import context_length, inference_dtype, pick_device
from tunecraft.labels import LabelSet, decide
from tunecraft.rundir import is_run_dir, read_labels, read_run, resolve_base

FinishReason = Literal["stop", "length", "cancelled", "error"]

# torch.Generator.manual_seed accepts exactly this range; anything else raises inside the batch.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


class GenerationError(TunecraftError):
    """A request the engine cannot serve (e.g. longer than the context window)."""


# ----------------------------------------------------------------------------- loading


@dataclass
class _SharedModel:
    """One module in memory and the lock that serializes its use (and its adapter switching)."""

    module: Any  # a transformers model, or a PeftModel once an adapter was attached
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set[str] = field(default_factory=set)


class ModelCache:
    """Base models loaded once per (path, dtype, device), so that several adapters share one."""

    def __init__(self) -> None:
        self._shared: dict[tuple[str, str, str], _SharedModel] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, dtype: torch.dtype, device: torch.device, trust_remote_code: bool) -> _SharedModel:
        from tunecraft.models.load import load_model

        key = (str(Path(path).resolve()), str(dtype), str(device))
        with self._lock:
            if key not in self._shared:
                module = load_model(path, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
                module.eval()
                self._shared[key] = _SharedModel(module)
            return self._shared[key]


@dataclass
class LoadedModel:
    """A model ready to generate: weights (maybe shared), tokenizer, and how to prompt it."""

    name: str
    tokenizer: Any
    template: TemplateMode
    system_prompt: str | None
    eos_token_ids: tuple[int, ...]  # generation stops at any of these (end-of-turn first)
    context_length: int
    device: torch.device
    shared: _SharedModel
    adapter: str | None = None  # None: run with every adapter disabled
    labels: LabelSet | None = None  # a closed-label run's label set: chat answers are constrained to it
    _trie: LabelTrie | None = field(default=None, init=False, repr=False, compare=False)

    def label_trie(self) -> LabelTrie:
        """The label set's token trie with this model's tokenizer and template (built once)."""
        assert self.labels is not None
        if self._trie is None:
            self._trie = build_trie(self.tokenizer, self.labels.labels, self.template, self.eos_token_ids)
        return self._trie

    @contextmanager
    def activate(self) -> Iterator[Any]:
        """Hold the base's lock with this target's adapter selected; yields the callable module."""
        from peft import PeftModel

        with self.shared.lock:
            module = self.shared.module
            if not isinstance(module, PeftModel):
                yield module
            elif self.adapter is None:
                with module.disable_adapter():
                    yield module
            else:
                module.set_adapter(self.adapter)
                yield module

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids[0])

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt ids for a conversation (tool calls and results, and `tools`, included),
        rendered and tokenized exactly as in training."""
        msgs = list(messages)  # rendering keeps only the fields templates read
        if self.system_prompt and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return prompt_ids(self.tokenizer, msgs, self.template, tools)

    def text_prompt(self, text: str) -> list[int]:
        """Ids for a raw text prompt, tokenized as training tokenized raw segments."""
        ids, _, _ = tokenize_segments(self.tokenizer, [(text, False)])
        return ids


def end_of_turn_ids(tokenizer: Any, model_dirs: Sequence[Path]) -> tuple[int, ...]:
    """The chat template's end-of-turn token (what training taught the model to write), the
    tokenizer's EOS, then generation-config EOS ids."""
    ids = end_token_ids(tokenizer)
    for directory in model_dirs:
        if not (directory / "generation_config.json").is_file():
            continue
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(str(directory)).eos_token_id
        for tid in [eos] if isinstance(eos, int) else (eos or []):
            if int(tid) not in ids:
                ids.append(int(tid))
    if not ids:
        raise GenerationError(
            "the model has no end-of-turn token (no tokenizer eos_token, no generation_config "
            "eos_token_id); generation would never stop"
        )
    return tuple(ids)


def load_target(
    target: str,
    *,
    name: str | None = None,
    cache: ModelCache | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a RUN_DIR (LoRA or full) or a MODEL argument (resolved like `--model`).

    Pass the same `cache` for several targets to share base weights between LoRA runs.
    The model id defaults to the run directory's name or the model argument itself.
    `trust_remote_code` comes from the caller's own flag only: the run directory's config may
    have been written by anyone, so it never enables a model's code (models.load refuses it).
    """
    from tunecraft.models.load import load_tokenizer

    cache = cache or ModelCache()
    dev = torch.device(device) if device is not None else pick_device()
    dt = dtype or inference_dtype(dev)
    path = Path(target).expanduser()
    if path.is_dir() and is_run_dir(path):
        info = read_run(path)
        model_id = name or info.run_dir.name
        tokenizer = load_tokenizer(info.model_dir, trust_remote_code=trust_remote_code)
        if info.method == "lora":
            base_dir = resolve_base(info)
            shared = cache.get(base_dir, dt, dev, trust_remote_code)
            _attach_adapter(shared, info.model_dir, model_id)
            adapter: str | None = model_id
            eos_dirs, model_dir = [info.model_dir, base_dir], base_dir
        else:
            shared = cache.get(info.model_dir, dt, dev, trust_remote_code)
            adapter, eos_dirs, model_dir = None, [info.model_dir], info.model_dir
        template, system_prompt = info.template, info.system_prompt
        labels = read_labels(info.run_dir)
    else:
        from tunecraft.models.resolve import resolve_model

        resolved = resolve_model(target)
        model_id = name or target
        tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust_remote_code)
        shared = cache.get(resolved.path, dt, dev, trust_remote_code)
        adapter, eos_dirs, model_dir = None, [resolved.path], resolved.path
        template, system_prompt, labels = "auto", None, None
    return LoadedModel(
        name=model_id,
        tokenizer=tokenizer,
        template=template,
        system_prompt=system_prompt,
        eos_token_ids=end_of_turn_ids(tokenizer, eos_dirs),
        context_length=context_length(tokenizer, model_dir),
        device=dev,
        shared=shared,
        adapter=adapter,
        labels=labels,
    )


def _attach_adapter(shared: _SharedModel, adapter_dir: Path, adapter_name: str) -> None:
    """Add a LoRA adapter to a shared base (wrapping it in a PeftModel the first time)."""
    from peft import PeftModel

    from tunecraft.models.load import add_adapter, load_peft

    with shared.lock:
        if adapter_name in shared.adapters:
            raise GenerationError(f"two targets share the model id {adapter_name!r}; pass distinct names")
        # Both helpers refuse an adapter without safetensors before peft could fall back to pickle.
        if isinstance(shared.module, PeftModel):
            add_adapter(shared.module, adapter_dir, adapter_name)
        else:
            shared.module = load_peft(shared.module, adapter_dir, adapter_name)
        shared.module.eval()
        shared.adapters.add(adapter_name)


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-turn (benchmarks, load tests)
    logprobs: int | None = None  # top alternatives per generated token (None: no log-probs)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5


def _sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """One token from (V,) float logits: argmax, or temperature + nucleus sampling."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < params.top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p.cpu(), 1, generator=gen)
        return int(order[choice.to(order.device)])
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _generator(params: SamplingParams) -> torch.Generator | None:
    """The row's own random stream (None when greedy); a seed torch cannot take is refused."""
    if params.greedy:
        return None
    seed = params.seed if params.seed is not None else random.getrandbits(63)
    if not SEED_MIN <= int(seed) <= SEED_MAX:
        raise GenerationError(f"seed={seed} is out of range: use an integer from {SEED_MIN} to {SEED_MAX}")
    return torch.Generator().manual_seed(int(seed))


# ----------------------------------------------------------------------------- text


class TextTracker:
    """Incremental detokenization with stop strings for one sequence.

    Text is re-decoded from all ids each step (byte-level BPE can split a character across
    tokens, so per-token decoding is wrong); text that might still become a stop string, or an
    incomplete UTF-8 character, is held back until it is decided.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0  # characters of `text` already returned as deltas
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that is now safe to emit (sets `stopped` on a stop string)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hit = self._find_stop()
        if hit is not None:
            self.text = self.text[:hit]
            self.stopped = True
            return self._emit(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = self.text.rstrip("\ufffd").__len__()
        safe = min(safe, len(self.text) - self._stop_prefix_len())
        return self._emit(max(safe, self.emitted))

    def flush(self) -> str:
        """Everything not yet emitted (the sequence ended for another reason than a stop string)."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self.emitted : upto]
        self.emitted = upto
        return delta

    def _find_stop(self) -> int | None:
        if not self.stop:
            return None
        longest = max(len(s) for s in self.stop)
        start = max(0, self.emitted - longest)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best


# ----------------------------------------------------------------------------- decoding


@dataclass
class TokenEvent:
    """One step of one row: the token, the text it released, and whether the row is done."""

    row: int
    token_id: int | None  # None when the row ended without a new token (eos, cancel)
    text: str
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: FinishReason | None = None
    error: Exception | None = None  # with finish_reason "error": why this row (alone) failed


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def check_budget(lm: LoadedModel, n_prompt: int, max_tokens: int) -> None:
    """Refuse a request whose prompt plus `max_tokens` does not fit the context window."""
    if n_prompt + max_tokens > lm.context_length:
        raise GenerationError(
            f"this model's context length is {lm.context_length} tokens; the prompt has {n_prompt} "
            f"and max_tokens asks for {max_tokens} more (at most {max(lm.context_length - n_prompt, 0)})"
        )


def generate_events(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    cancelled: Callable[[int], bool] | None = None,
) -> Iterator[list[TokenEvent]]:
    """Decode a batch of prompts together (left padding); yields each step's events.

    `params` is one SamplingParams for all rows or one per row. A row ends at an end-of-turn
    token (not included in the text), a stop string (cut before it), `max_tokens`, or when
    `cancelled(row)` turns true. Greedy rows give the same tokens as decoding them alone
    (up to floating-point ties). A row that cannot be served (empty, too long, a bad seed, a
    failure while sampling it) ends alone with finish_reason "error" and its `error`; the other
    rows of the batch go on.
    """
    rows = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    assert len(rows) == len(prompts) and prompts
    check = cancelled or (lambda _row: False)
    failed: list[TokenEvent] = []
    good: list[int] = []
    gens: list[torch.Generator | None] = []
    for r, (p, sp) in enumerate(zip(prompts, rows)):
        try:
            gens.append(_row_generator(lm, p, sp))
            good.append(r)
        except Exception as exc:  # a row that cannot start fails alone (see docstring)
            failed.append(TokenEvent(r, None, "", finish_reason="error", error=exc))
    if failed:
        yield failed
    if not good:
        return
    with lm.activate() as module, torch.inference_mode():
        for events in _decode(lm, module, [prompts[r] for r in good], [rows[r] for r in good], gens, lambda i: check(good[i])):
            for ev in events:  # back from the decoded rows' numbering to the caller's
                ev.row = good[ev.row]
            yield events


def _row_generator(lm: LoadedModel, prompt: Sequence[int], sp: SamplingParams) -> torch.Generator | None:
    """Check that a row can be decoded at all; returns its random stream."""
    if not prompt:
        raise GenerationError("empty prompt")
    check_budget(lm, len(prompt), sp.max_tokens)
    return _generator(sp)


def _decode(
    lm: LoadedModel,
    module: Any,
    prompts: Sequence[Sequence[int]],
    rows: list[SamplingParams],
    gens: list[torch.Generator | None],
    cancelled: Callable[[int], bool],
) -> Iterator[list[TokenEvent]]:
    from transformers import DynamicCache

    n = len(prompts)
    trackers = [TextTracker(lm.tokenizer, sp.stop) for sp in rows]
    done = [sp.max_tokens <= 0 for sp in rows]
    counts = [0] * n
    eos = set(lm.eos_token_ids)
    ids, mask = _left_pad(prompts, lm.pad_token_id, lm.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding must not shift positions
    if all(done):
        return
    cache = DynamicCache(config=module.config)
    out = module(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    while True:
        logits = out.logits[:, -1, :].float()  # (B, V)
        logp = torch.log_softmax(logits, dim=-1) if any(sp.logprobs is not None for sp in rows) else None
        events: list[TokenEvent] = []
        next_ids = [lm.pad_token_id] * n
        for r in range(n):
            if done[r]:
                continue
            if cancelled(r):
                done[r] = True
                events.append(TokenEvent(r, None, "", finish_reason="cancelled"))
                continue
            sp = rows[r]
            try:
                tok = _sample(logits[r], sp, gens[r])
                event = _step_row(lm, trackers[r], tok, sp, logp[r] if logp is not None else None, r, eos)
            except Exception as exc:  # this row's sampling or detokenizing failed: end it alone
                done[r] = True
                events.append(TokenEvent(r, None, "", finish_reason="error", error=exc))
                continue
            counts[r] += event.token_id is not None
            if event.finish_reason is None and counts[r] >= sp.max_tokens:
                event.text += trackers[r].flush()
                event.finish_reason = "length"
            done[r] = event.finish_reason is not None
            next_ids[r] = tok
            events.append(event)
        if events:
            yield events
        if all(done):
            return
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
        positions = positions[:, -1:] + 1
        step_ids = torch.tensor(next_ids, dtype=torch.long, device=lm.device)[:, None]
        out = module(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)


def _step_row(
    lm: LoadedModel,
    tracker: TextTracker,
    tok: int,
    sp: SamplingParams,
    logp: torch.Tensor | None,
    row: int,
    eos: set[int],
) -> TokenEvent:
    """Apply one sampled token to a row: end-of-turn, stop strings, or new text."""
    lp, top = None, None
    if logp is not None and sp.logprobs is not None:
        lp = float(logp[tok])
        if sp.logprobs > 0:
            values, indices = torch.topk(logp, sp.logprobs)
            top = {int(i): float(v) for v, i in zip(values, indices)}
    if tok in eos and not sp.ignore_eos:
        return TokenEvent(row, None, tracker.flush(), finish_reason="stop")
    text = tracker.push(tok)
    return TokenEvent(row, tok, text, lp, top, "stop" if tracker.stopped else None)


# ----------------------------------------------------------------------------- convenience API


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


def generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    batch_size: int = 8,
) -> list[Completion]:
    """Complete each prompt (token ids), `batch_size` prompts per forward pass."""
    results: list[Completion] = []
    per_row = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = per_row[start : start + batch_size]
        results.extend(_run_batch(lm, chunk, rows))
    return results


def _run_batch(lm: LoadedModel, prompts: Sequence[Sequence[int]], rows: list[SamplingParams]) -> list[Completion]:
    done = [Completion("", [], "length", len(p), 0) for p in prompts]
    for events in generate_events(lm, prompts, rows):
        for ev in events:
            if ev.error is not None:  # batch callers (eval) get the row's error as before
                raise ev.error
            c = done[ev.row]
            c.text += ev.text
            if ev.token_id is not None:
                c.token_ids.append(ev.token_id)
                c.completion_tokens += 1
                if ev.logprob is not None:
                    c.logprobs.append(ev.logprob)
                    c.top_logprobs.append(ev.top_logprobs or {})
            if ev.finish_reason is not None:
                c.finish_reason = ev.finish_reason
    return done


def generate_chat(lm: LoadedModel, conversations: Sequence[list[dict[str, Any]]], params: SamplingParams = SamplingParams(), batch_size: int = 8) -> list[Completion]:
    """Answer each conversation (OpenAI-style message dicts), batched."""
    return generate(lm, [lm.chat_prompt(c) for c in conversations], params, batch_size)


def stream(
    lm: LoadedModel,
    prompt: Sequence[int],
    params: SamplingParams = SamplingParams(),
    cancel: threading.Event | None = None,
) -> Iterator[str]:
    """Text deltas for one prompt as they are generated (stops early when `cancel` is set)."""
    check = (lambda _row: cancel.is_set()) if cancel is not None else None
    for events in generate_events(lm, [prompt], params, check):
        for ev in events:
            if ev.error is not None:
                raise ev.error
            if ev.text:
                yield ev.text


# ----------------------------------------------------------------------------- scoring


@dataclass
class PromptLogprobs:
    """Per prompt token: its log-prob given the tokens before it (None for the first)."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


def prompt_logprobs(lm: LoadedModel, ids: Sequence[int], top: int = 1) -> PromptLogprobs:
    """One forward pass: log-softmax of the logits at t-1 read at token t (what eval harnesses score)."""
    if not ids:
        raise GenerationError("empty prompt")
    check_budget(lm, len(ids), 0)
    tokens = torch.tensor([list(ids)], dtype=torch.long, device=lm.device)
    with lm.activate() as module, torch.inference_mode():
        logits = module(input_ids=tokens).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits[:-1], dim=-1)  # (T-1, V): predicts tokens 1..T-1
    target = tokens[0, 1:]
    chosen = logp.gather(1, target[:, None])[:, 0].tolist()
    tops: list[dict[int, float] | None] = [None]
    if top > 0:
        values, indices = torch.topk(logp, top, dim=-1)
        for v_row, i_row in zip(values.tolist(), indices.tolist()):
            tops.append(dict(zip(i_row, v_row)))
    else:
        tops.extend({} for _ in chosen)
    return PromptLogprobs(list(ids), [None, *chosen], tops)


def token_strings_and_offsets(tokenizer: Any, ids: Sequence[int], start: int = 0) -> tuple[list[str], list[int]]:
    """Each token's text and its character offset in the decoded text (OpenAI `text_offset`)."""
    pieces = [tokenizer.decode([t]) for t in ids]
    whole = tokenizer.decode(list(ids))
    offsets: list[int] = []
    if "".join(pieces) == whole:
        pos = start
        for p in pieces:
            offsets.append(pos)
            pos += len(p)
    else:  # a character split across tokens: measure each prefix instead
        offsets = [start + len(tokenizer.decode(list(ids[:i]))) for i in range(len(ids))]
    return pieces, offsets


# ----------------------------------------------------------------------------- closed labels


@dataclass
class LabelAnswer:
    """A constrained answer: a label of the set, with the set's probabilities."""

    label: str  # the answer: the reject label when the model was less sure than the threshold
    model_label: str  # the label the model chose (most probable, or sampled)
    confidence: float  # the chosen label's probability over the set
    rejected: bool
    threshold: float
    probs: dict[str, float]  # every label, most probable first
    token_ids: list[int]  # the answer's tokens, end-of-turn last
    token_logprobs: list[float]  # each token's log-prob under the model (whole vocabulary)
    top_logprobs: list[dict[int, float]]  # top alternatives at each token (when asked)

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        probs = dict(list(self.probs.items())[:top]) if top else self.probs
        return {"label": self.label, "model_label": self.model_label, "confidence": self.confidence,
                "rejected": self.rejected, "threshold": self.threshold, "probs": probs}


def classify(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    reject: bool | Sequence[bool] = True,
    batch_size: int = 8,
) -> list[LabelAnswer]:
    """Answer each prompt with a label of `lm.labels` (see the module docstring).

    Greedy rows take the most probable label; others sample from the set's probabilities
    sharpened by 1/temperature, seeded per row. `reject` (all rows or per row): apply the run's
    reject threshold.
    """
    assert lm.labels is not None, "classify needs a model with a label set"
    rows = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    for p, sp in zip(prompts, rows):
        if not p:
            raise GenerationError("empty prompt")
        check_budget(lm, len(p), 0)
    trie, labels = lm.label_trie(), lm.labels
    keep = [labels.labels.index(labels.reject_label)] if labels.reject_label else []
    top_k = max((sp.logprobs or 0) for sp in rows)
    # A sampled row may land on any label: its tokens' log-probs must all be exact then.
    margin = None if any(not sp.greedy for sp in rows) else PRUNE_MARGIN
    with lm.activate() as module:
        scores = score_batched(module, prompts, trie, lm.device, batch_size, margin, top_k, keep)
    rejects = [reject] * len(rows) if isinstance(reject, bool) else list(reject)
    return [_label_answer(lm, s, sp, rj) for s, sp, rj in zip(scores, rows, rejects)]


def _label_answer(lm: LoadedModel, scores: Any, sp: SamplingParams, reject: bool) -> LabelAnswer:
    labels = lm.labels
    assert labels is not None
    trie = lm.label_trie()
    chosen = scores.best
    if not sp.greedy:
        weights = torch.tensor([p ** (1.0 / sp.temperature) for p in scores.probs], dtype=torch.float64)
        chosen = int(torch.multinomial(weights / weights.sum(), 1, generator=_generator(sp)))
    model_label, confidence = labels.labels[chosen], scores.probs[chosen]
    threshold = labels.threshold if reject else 0.0
    answer = decide(model_label, confidence, threshold, labels.reject_label)
    path = trie.path(labels.labels.index(answer))
    order = sorted(range(len(labels.labels)), key=lambda i: -scores.probs[i])
    return LabelAnswer(
        label=answer, model_label=model_label, confidence=confidence, rejected=answer != model_label,
        threshold=threshold, probs={labels.labels[i]: scores.probs[i] for i in order},
        token_ids=[trie.token[n] for n in path],
        token_logprobs=[scores.token_logprob.get(n, math.nan) for n in path],
        top_logprobs=[scores.top_logprobs.get(n, {}) for n in path],
    )


def label_events(lm: LoadedModel, answer: LabelAnswer, row: int, logprobs: int | None) -> list[TokenEvent]:
    """The answer as the decode loop would have streamed it: one event per token, then "stop"."""
    tracker = TextTracker(lm.tokenizer, ())
    eos = set(lm.eos_token_ids)
    events = []
    for tok, lp, top in zip(answer.token_ids, answer.token_logprobs, answer.top_logprobs):
        if tok in eos:
            break
        text = tracker.push(tok)
        wanted = logprobs is not None
        events.append(TokenEvent(row, tok, text, lp if wanted else None,
                                 dict(list(top.items())[:logprobs]) if wanted and logprobs else None))
    events.append(TokenEvent(row, None, tracker.flush(), finish_reason="stop"))
    return events
