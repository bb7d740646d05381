"""Check an exported artifact against the run it came from, before the export reports success.

Three checks, each a hard failure:
1. Rendering: the artifact's tokenizer + chat template turn sample conversations (prompts and
   full conversations) into exactly the token ids the run's tokenizer produced in training.
2. End of turn: the artifact stops generation at the end-of-turn token (generation config EOS,
   or the GGUF's eos/eot id).
3. Logits: on those conversations the artifact's logits match the run's model within a tolerance
   that depends on the weights' precision (TOLERANCES: max |diff| <= atol + rtol * max |ref logit|).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunecraft.data.render import chat_segments, prompt_ids, tokenize_segments, use_chat
from tunecraft.errors import TunecraftError
from tunecraft.serve.engine import LoadedModel


class ExportVerificationError(TunecraftError):
    """The exported artifact does not behave like the run's model."""


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float  # relative to the largest reference logit

    def limit(self, ref_scale: float) -> float:
        return self.atol + self.rtol * ref_scale


# Measured on SmolLM2-135M with a LoRA run (max |logit| ~41): merged fp32 1.6e-4 abs (3.8e-6
# relative), bf16 0.31 (7.6e-3), fp16 0.054 (1.3e-3), GGUF f16 0.054 (1.3e-3), GGUF q8_0 2.5
# (6.1e-2: the tied embedding/output matrix is quantized too, as llama.cpp does). Limits keep
# a ~3-4x margin over those; the adapter loads through the same code as the run, so ~exact.
TOLERANCES: dict[str, Tolerance] = {
    "adapter": Tolerance(1e-5, 1e-6),
    "float32": Tolerance(1e-4, 1e-5),
    "float16": Tolerance(1e-3, 5e-3),
    "bfloat16": Tolerance(1e-2, 3e-2),
    "gguf-f32": Tolerance(1e-4, 1e-5),
    "gguf-f16": Tolerance(1e-3, 5e-3),
    "gguf-q8_0": Tolerance(5e-2, 0.15),
    "gguf-q4_0": Tolerance(0.5, 0.5),
    # LoRA GGUF: |(base + alpha/r B A) - merged| per weight, relative to max |merged - base|.
    # Measured on the tiny families (rank 4): f32 1e-7, f16 3.9e-4, q8_0 4.5e-3 (relative).
    "gguf-lora-f32": Tolerance(1e-6, 1e-5),
    "gguf-lora-f16": Tolerance(1e-6, 2e-3),
    "gguf-lora-q8_0": Tolerance(1e-6, 2e-2),
}

SAMPLE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello! How can I get a refund?"},
     {"role": "assistant", "content": "Your refund request was received; we reply within 24 hours."}],
    [{"role": "system", "content": "Answer briefly and politely."},
     {"role": "user", "content": "Order 12345 -- café au lait, 2x. Where is it?"},
     {"role": "assistant", "content": "It ships in two days."},
     {"role": "user", "content": "Thanks  a lot :)\nBye"},
     {"role": "assistant", "content": "{\"intent\": \"bye\"}"}],
    [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"},
     {"role": "assistant", "content": "Yes."}],
]


def _with_system(conv: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and conv[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *conv]
    return conv


def rendered_samples(tokenizer: Any, template: str, system_prompt: str | None,
                     conversations: list[list[dict[str, str]]] | None = None) -> list[list[int]]:
    """Generation prompts and full conversations, tokenized as training does."""
    out: list[list[int]] = []
    for conv in SAMPLE_CONVERSATIONS if conversations is None else conversations:
        msgs = _with_system(conv, system_prompt)
        out.append(prompt_ids(tokenizer, msgs[:-1], template))  # the prompt before the last answer
        if use_chat(tokenizer, template):
            segs = chat_segments(tokenizer, [{**m, "weight": 1} for m in msgs])
        else:
            segs = [("".join(f"{m['role']}: {m['content']}\n" for m in msgs), False)]
        out.append(tokenize_segments(tokenizer, segs)[0])
    return out


def _renderable(ref: LoadedModel) -> list[list[dict[str, str]]]:
    """The samples the run's own template renders: one that refuses a system turn (Gemma's) or a
    multi-turn layout could not have trained on them either."""
    from jinja2.exceptions import TemplateError

    keep = []
    for conv in SAMPLE_CONVERSATIONS:
        try:
            rendered_samples(ref.tokenizer, ref.template, ref.system_prompt, [conv])
        except (TemplateError, TunecraftError):
            continue
        keep.append(conv)
    if not keep:
        raise ExportVerificationError("the run's chat template renders none of the sample conversations")
    return keep


def check_rendering(ref: LoadedModel, tokenizer: Any, where: str) -> list[list[int]]:
    """The artifact's tokenizer renders the samples exactly as the run's; returns the ids."""
    samples = _renderable(ref)
    expected = rendered_samples(ref.tokenizer, ref.template, ref.system_prompt, samples)
    try:
        got = rendered_samples(tokenizer, ref.template, ref.system_prompt, samples)
    except TunecraftError as exc:
        raise ExportVerificationError(f"{where}: its tokenizer cannot render chats as training did: {exc}") from None
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            raise ExportVerificationError(
                f"{where}: its tokenizer/chat template renders sample {i} differently from training "
                f"(first difference at token {first}: run {a[first:first + 5]} vs export {b[first:first + 5]}). "
                "The chat template or tokenizer files were changed; re-export from the run directory."
            )
    return expected


def check_end_of_turn(ref: LoadedModel, eos_ids: list[int], where: str) -> None:
    eot = ref.eos_token_ids[0]
    if eot not in eos_ids:
        name = ref.tokenizer.convert_ids_to_tokens(eot)
        raise ExportVerificationError(
            f"{where}: generation would not stop at the end-of-turn token {name!r} (id {eot}); "
            f"its configured eos ids are {eos_ids}"
        )


def generation_config_eos(directory: Path) -> list[int]:
    from transformers import GenerationConfig

    if not (directory / "generation_config.json").is_file():
        return []
    eos = GenerationConfig.from_pretrained(str(directory)).eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def compare_logits(
    ref: LoadedModel,
    forward: Callable[[torch.Tensor], torch.Tensor],
    samples: list[list[int]],
    tolerance: Tolerance,
    where: str,
) -> float:
    """Max |logit diff| over the samples; raises when it exceeds the tolerance. Returns the max."""
    worst, scale = 0.0, 0.0
    for ids in samples:
        x = torch.tensor([ids], dtype=torch.long, device=ref.device)
        with ref.activate() as module, torch.inference_mode():
            expected = module(input_ids=x).logits.float()
        with torch.inference_mode():
            got = forward(x).float()
        worst = max(worst, float((expected - got).abs().max()))
        scale = max(scale, float(expected.abs().max()))
    limit = tolerance.limit(scale)
    if not worst <= limit:  # also catches NaN
        raise ExportVerificationError(
            f"{where}: logits differ from the run's model by up to {worst:.3g} "
            f"(allowed {limit:.3g} = {tolerance.atol:g} + {tolerance.rtol:g} x max |logit| {scale:.3g})"
        )
    return worst
