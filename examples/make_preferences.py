"""Derive the example preference pairs from the support dataset (deterministic, stdlib only).

Each support conversation becomes a pair: its prompt (the customer's message), the correct
answer preferred, and the same answer with a confusable wrong intent (and that intent's
priority) rejected, e.g. `transfer_failed` preferred to `transfer_pending`. This is the mistake a
tuned classifier actually makes, so DPO has to learn the distinction, not the format.

    python examples/make_preferences.py            # writes examples/support/prefs_*.jsonl
    python examples/make_preferences.py --out DIR  # same bytes, elsewhere

prefs_train.jsonl uses OpenAI's preference layout ({"input": {"messages"}, "preferred_output",
"non_preferred_output"}); prefs_val.jsonl and prefs_test.jsonl the {"prompt", "chosen",
"rejected"} layout (both are read by tunecraft). The same inputs always give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 20261202
HERE = Path(__file__).resolve().parent
# The intents a reader (or a model) most easily confuses with each one.
CONFUSABLE = {
    "address_change": ["close_account", "card_arrival"],
    "app_login": ["pin_blocked", "card_lost"],
    "atm_issue": ["card_declined", "pin_blocked"],
    "card_arrival": ["card_lost", "address_change"],
    "card_declined": ["atm_issue", "unknown_charge"],
    "card_lost": ["card_arrival", "unknown_charge"],
    "close_account": ["address_change", "foreign_fee"],
    "foreign_fee": ["unknown_charge", "card_declined"],
    "pin_blocked": ["app_login", "atm_issue"],
    "refund_missing": ["unknown_charge", "transfer_pending"],
    "transfer_failed": ["transfer_pending", "refund_missing"],
    "transfer_pending": ["transfer_failed", "refund_missing"],
    "unknown_charge": ["refund_missing", "foreign_fee"],
}


def _priorities(rows: list[dict]) -> dict[str, str]:
    """Each intent's fixed priority, read from the answers themselves."""
    out: dict[str, str] = {}
    for row in rows:
        answer = json.loads(row["messages"][-1]["content"])
        out[answer["intent"]] = answer["priority"]
    return out


def pair(row: dict, priority: dict[str, str], rng: random.Random) -> tuple[list[dict], str, str]:
    """(prompt messages, preferred answer, rejected answer) of one support conversation."""
    answer = json.loads(row["messages"][-1]["content"])
    wrong = rng.choice(CONFUSABLE[answer["intent"]])
    rejected = {**answer, "intent": wrong, "priority": priority[wrong]}
    return row["messages"][:-1], row["messages"][-1]["content"], json.dumps(rejected)


def write(out: Path) -> list[Path]:
    rng = random.Random(SEED)
    splits = {name: [json.loads(line) for line in (HERE / "support" / f"{name}.jsonl").read_text().splitlines()]
              for name in ("train", "val", "test")}
    priority = _priorities(splits["train"])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in splits.items():
        lines = []
        for row in rows:
            prompt, chosen, rejected = pair(row, priority, rng)
            if name == "train":  # OpenAI's layout
                obj = {"input": {"messages": prompt},
                       "preferred_output": [{"role": "assistant", "content": chosen}],
                       "non_preferred_output": [{"role": "assistant", "content": rejected}]}
            else:
                obj = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
            lines.append(json.dumps(obj, ensure_ascii=False))
        path = out / f"prefs_{name}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "support")
    for path in write(parser.parse_args().out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
