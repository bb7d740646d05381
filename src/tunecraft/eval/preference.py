"""Held-out preference evaluation: does the tuned model prefer the preferred answers?

For a test file of preference pairs, every answer is scored by teacher forcing (its summed
token log-probability, rendered exactly as training renders it) under the tuned model and the
base model. Reported per system:
- `logp_accuracy`: the share of pairs whose preferred answer the system itself finds more
  likely (the base model's own preference is the baseline);
- for the tuned model against the base as reference (DPO's implicit reward): `preference_accuracy`
  (the chosen reward above the rejected one, TRL's `rewards/accuracies`), the mean reward margin
  and the DPO loss at the run's beta, each with a 95% interval where it means something.
`tunecraft eval RUN --data PAIRS.jsonl` writes these to eval.json with the curves' verdict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunecraft import rundir
from tunecraft.curves import run_verdict
from tunecraft.data.pairs import padded_pair_batch
from tunecraft.data.render import TokenizedPair, tokenize_pair
from tunecraft.data.schema import Example
from tunecraft.train.dpo import sequence_logps


def are_pairs(examples: Sequence[Example]) -> bool:
    """Whether a data file's examples are preference pairs (a file holds one format)."""
    return bool(examples) and examples[0].format == "preference"


def tokenize_pairs(lm: Any, examples: list[Example]) -> list[TokenizedPair]:
    limit = int(getattr(lm, "context_length", 0) or 0) or None
    return [tokenize_pair(e, lm.tokenizer, limit, lm.template, lm.system_prompt) for e in examples]


@torch.no_grad()
def pair_logps(lm: Any, pairs: list[TokenizedPair], batch_size: int = 8) -> torch.Tensor:
    """(N, 2) summed answer log-probs (chosen, rejected) under `lm` (a serve.engine.LoadedModel)."""
    out = []
    with lm.activate() as module:
        was = module.training
        module.eval()
        for at in range(0, len(pairs), batch_size):
            pb = padded_pair_batch(pairs[at : at + batch_size], lm.pad_token_id).to(lm.device)
            out.append(sequence_logps(module, pb, "fast").float().cpu())
        module.train(was)
    return torch.cat(out) if out else torch.zeros((0, 2))


def _mean_ci(values: torch.Tensor) -> tuple[float, float | None]:
    n = values.numel()
    mean = float(values.mean()) if n else math.nan
    if n < 4:
        return mean, None
    return mean, 1.96 * float(values.std(unbiased=True)) / math.sqrt(n)


def preference_metrics(policy: torch.Tensor, reference: torch.Tensor | None, beta: float) -> dict[str, Any]:
    """Metrics of one system's (N, 2) log-probs, against the reference's when given."""
    acc, acc_ci = _mean_ci((policy[:, 0] > policy[:, 1]).float())
    out: dict[str, Any] = {"pairs": int(policy.shape[0]), "logp_accuracy": acc, "logp_accuracy_ci95": acc_ci,
                           "logp_chosen": float(policy[:, 0].mean()), "logp_rejected": float(policy[:, 1].mean())}
    if reference is not None:
        rewards = beta * (policy - reference)  # (N, 2)
        margin = rewards[:, 0] - rewards[:, 1]
        pref, pref_ci = _mean_ci((margin > 0).float())
        mean_margin, margin_ci = _mean_ci(margin)
        loss, loss_ci = _mean_ci(-F.logsigmoid(margin))
        out.update({"preference_accuracy": pref, "preference_accuracy_ci95": pref_ci,
                    "reward_margin": mean_margin, "reward_margin_ci95": margin_ci,
                    "dpo_loss": loss, "dpo_loss_ci95": loss_ci})
    return out


def paired_test(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """Two systems' right/wrong on the same pairs: McNemar's exact test.

    Only the pairs exactly one system gets right say which is better; under "equally good"
    each of them is a fair coin, so the two-sided p-value is the binomial tail of the split.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_test needs the same pairs on both sides (got {len(a)} and {len(b)})")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"pairs": len(a), "both_right": sum(1 for x, y in zip(a, b) if x and y),
            "both_wrong": sum(1 for x, y in zip(a, b) if not x and not y),
            "only_a": only_a, "only_b": only_b, "p_two_sided": min(1.0, 2 * tail)}


def compare(tuned: Any, base: Any, examples: list[Example], beta: float) -> dict[str, dict[str, Any]]:
    """Base and tuned systems' metrics on the same pairs (tokenized with the tuned model's renderer)."""
    pairs = tokenize_pairs(tuned, examples)
    ref = pair_logps(base, pairs)
    policy = pair_logps(tuned, pairs)
    return {"base": preference_metrics(ref, None, beta), "tuned": preference_metrics(policy, ref, beta)}


def evaluate_preference_run(run_dir: Path, data: Path, examples: Sequence[Example], limit: int | None,
                            on_status: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`tunecraft eval RUN --data PAIRS`: base vs tuned on held-out pairs; writes eval.json."""
    from tunecraft.serve.engine import ModelCache, load_target

    status = on_status or (lambda _msg: None)
    info = rundir.read_run(run_dir)
    cfg = rundir.read_config(run_dir)
    examples = list(examples[:limit] if limit else examples)
    cache = ModelCache()
    status(f"scoring {len(examples)} pairs with the tuned model and the base model")
    tuned = load_target(str(run_dir), cache=cache)
    base = load_target(str(rundir.resolve_base(info)), cache=cache)
    systems = compare(tuned, base, examples, cfg.train.dpo.beta)
    t, b = systems["tuned"], systems["base"]
    payload = {
        "kind": "preference",
        "run_dir": str(run_dir),
        "data": str(data),
        "examples": len(examples),
        "beta": cfg.train.dpo.beta,
        "systems": systems,
        "improved": t["logp_accuracy"] > b["logp_accuracy"],
        "verdict": run_verdict(run_dir).to_json(),
    }
    (Path(run_dir) / "eval.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return payload


def print_preference(payload: dict[str, Any], console: Any) -> None:
    """The base / tuned table and the verdict lines."""
    from rich.table import Table

    def cell(row: dict[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        ci = row.get(f"{key}_ci95")
        return f"{value:.3f}" + (f" ± {ci:.3f}" if ci is not None else "")

    table = Table(title=f"Preference pairs: {payload['examples']} held out (beta {payload['beta']})",
                  title_justify="left")
    keys = ("logp_accuracy", "preference_accuracy", "reward_margin", "dpo_loss", "logp_chosen", "logp_rejected")
    table.add_column("system")
    for key in keys:
        table.add_column(key.replace("_", " "), justify="right")
    for name, row in payload["systems"].items():
        table.add_row(name, *(cell(row, k) for k in keys))
    console.print(table)
    console.print(f"curves: {payload['verdict']['status']}: {payload['verdict']['message']}", markup=False, highlight=False)
