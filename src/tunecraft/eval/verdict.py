"""The ship verdict: should the tuned model ship?

It combines the evaluation with the curves' verdict (`tunecraft.curves`): the tuned model must
beat every baseline beyond the bootstrap interval of the paired difference, and a run that
memorized its data does not ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunecraft.curves import Verdict
from tunecraft.eval.bootstrap import Interval


@dataclass(frozen=True)
class ShipVerdict:
    ship: bool
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"ship": self.ship, "line": self.line}


def ship_verdict(
    metric: str,
    tuned: Interval,
    baselines: dict[str, tuple[Interval, Interval]],
    curves: Verdict | None,
) -> ShipVerdict:
    """Ship when the tuned model beats every baseline beyond the paired interval.

    `baselines` maps a name to (its own interval, interval of tuned minus it on the same
    examples). Memorizing blocks shipping: the held-out win may not survive new phrasing.
    """
    losing = [(name, own, diff) for name, (own, diff) in baselines.items() if diff.low <= 0]
    if losing:
        name, own, diff = max(losing, key=lambda item: item[1].mean)
        return ShipVerdict(False, (
            f"do not ship: the tuned model's {metric} ({tuned.mean:.3f}) is not better than {name} "
            f"({own.mean:.3f}) beyond the 95% interval (difference {diff.mean:+.3f}, "
            f"[{diff.low:+.3f}, {diff.high:+.3f}]){_remedy(curves)}"
        ))
    beaten = ", ".join(f"{n} {own.mean:.3f}" for n, (own, _) in baselines.items()) or "no baseline evaluated"
    if curves is not None and curves.status == "memorizing":
        return ShipVerdict(False, (
            f"do not ship yet: the tuned model wins on {metric} ({tuned.mean:.3f} vs {beaten}) but "
            "training memorized its data; retrain with more data or fewer epochs and re-evaluate"
        ))
    caveat = ""
    if curves is not None and curves.status == "overfitting":
        caveat = f"; model/ holds step {curves.best_step}, before overfitting began"
    elif curves is not None and curves.status == "underfitting":
        caveat = "; more training would likely improve it further"
    return ShipVerdict(True, (
        f"ship: the tuned model's {metric} is {tuned.mean:.3f} [{tuned.low:.3f}, {tuned.high:.3f}] "
        f"vs {beaten}, better beyond the 95% interval{caveat}"
    ))


def _remedy(curves: Verdict | None) -> str:
    if curves is None or not curves.suggestions:
        return "; try more data, a better prompt, or a different base model"
    return "; try " + curves.suggestions[0]
