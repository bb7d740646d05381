"""General abilities kept? How far tuning moved the model on inputs outside the task.

On a fixed set of generic prompts shipped with tunecraft (`general_prompts.json`: facts, how-to,
writing, code, arithmetic, small talk), the *base* model answers greedily (deterministic, so the
text is the same on every run), and both models then read the base's answers: per answer token,
the KL divergence KL(base || tuned) of their next-token distributions (nats) and each model's
negative log-likelihood of the base's token. A tuned model that kept its general behaviour stays
close to the base there; one that learnt to answer everything with a task label does not.

Verdict: "general abilities kept" when the mean KL per token is at most `KL_THRESHOLD`, else
"degraded". The threshold is a stated convention, not a law: 0.3 nats/token is about the
distance at which greedy answers of two models start to differ in most sentences.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunecraft.serve.engine import LoadedModel, SamplingParams, generate

PROMPTS_FILE = Path(__file__).with_name("general_prompts.json")
ANSWER_TOKENS = 48  # base-model answer length per prompt
KL_THRESHOLD = 0.3  # nats per token


def general_prompts() -> list[str]:
    return list(json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))["prompts"])


@dataclass
class GeneralResult:
    prompts: int
    tokens: int
    kl: float  # mean KL(base || tuned) per answer token, nats
    kl_first: float  # mean over prompts of the first answer token's KL (where a task habit shows first)
    nll_base: float  # mean NLL of the base's answer tokens under the base
    nll_tuned: float  # ... under the tuned model
    kept: bool
    threshold: float
    samples: list[dict[str, Any]]

    @property
    def line(self) -> str:
        verdict = "general abilities kept" if self.kept else "general abilities degraded"
        return (f"{verdict}: on {self.prompts} generic prompts the tuned model is {self.kl:.3f} nats/token from the base "
                f"(KL, threshold {self.threshold}; first token {self.kl_first:.2f}); NLL of the base's answers "
                f"{self.nll_base:.3f} (base) -> {self.nll_tuned:.3f} (tuned)")

    def to_json(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "tokens": self.tokens, "kl_per_token": self.kl, "kl_first_token": self.kl_first,
                "nll_base": self.nll_base, "nll_tuned": self.nll_tuned, "kept": self.kept,
                "threshold_kl": self.threshold, "line": self.line, "samples": self.samples}


def _logp(lm: LoadedModel, ids: list[int], start: int) -> torch.Tensor:
    """(T - start, V) log-softmax of the distributions that predicted tokens start..T-1."""
    tokens = torch.tensor([ids], dtype=torch.long, device=lm.device)
    with lm.activate() as module, torch.inference_mode():
        logits = module(input_ids=tokens).logits[0].float()
    return torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)


def measure_general(base: LoadedModel, tuned: LoadedModel, prompts: list[str] | None = None,
                    answer_tokens: int = ANSWER_TOKENS, batch_size: int = 8) -> GeneralResult:
    """The base answers each prompt; both models score those answers (see the module docstring)."""
    texts = prompts if prompts is not None else general_prompts()
    prompt_ids = [base.chat_prompt([{"role": "user", "content": t}]) for t in texts]
    room = [min(answer_tokens, base.context_length - len(p)) for p in prompt_ids]
    params = [SamplingParams(max_tokens=max(1, r)) for r in room]
    answers = generate(base, prompt_ids, params, batch_size)
    kls, firsts, nll_b, nll_t, samples = [], [], [], [], []
    for text, ids, answer in zip(texts, prompt_ids, answers):
        # The end-of-turn token is part of the answer: stopping (or not) is behaviour too.
        tail = answer.token_ids + ([base.eos_token_ids[0]] if answer.finish_reason == "stop" else [])
        if not tail:
            continue
        seq = ids + tail
        lb, lt = _logp(base, seq, len(ids)), _logp(tuned, seq, len(ids))
        target = torch.tensor(tail, device=lb.device)[:, None]
        kl = (lb.exp() * (lb - lt)).sum(-1)  # (T,)
        kls += kl.tolist()
        firsts.append(float(kl[0]))
        nll_b += (-lb.gather(1, target)[:, 0]).tolist()
        nll_t += (-lt.gather(1, target)[:, 0]).tolist()
        samples.append({"prompt": text, "base_answer": answer.text, "kl_per_token": float(kl.mean())})
    mean = (lambda xs: sum(xs) / len(xs) if xs else math.nan)
    kl_mean = mean(kls)
    return GeneralResult(len(samples), len(kls), kl_mean, mean(firsts), mean(nll_b), mean(nll_t),
                         bool(kl_mean <= KL_THRESHOLD), KL_THRESHOLD, samples)
