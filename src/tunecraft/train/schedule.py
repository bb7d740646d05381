"""The LR schedule's segments and the time budget that may refit them.

A run's schedule is a list of segments, `[first step, end step)` each:

- `[start, end]`: warmup then decay over its steps (a new run; `--resume --epochs N` after the
  run ended adds one, a new warmup and decay over the new steps);
- `[start, end, progress]`: a refit: the decay goes on from `progress` (where the previous
  segment had brought it at `start`) and ends at `end`, so the LR is continuous across it.

A refit comes from the time budget: when the steps run slower than the warm-up measured (a
shared machine, longer batches later on), the run would hit the budget mid-decay, with the LR
still high, and stop on a plateau. The budget projects the end from what the steps cost so far
and moves the schedule's end to where the budget runs out, so its decay still ends there.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from tunecraft.train.optim import decay_factor, decay_progress, lr_factor
from tunecraft.train.plan import WRITE_BYTES_PER_S, Plan, TrainSettings, checkpoint_bytes

Segment = list[float]  # [start, end] or [start, end, progress at start]


def segment_at(segments: list[Segment], step: int) -> Segment:
    """The segment `step` belongs to (the last one starting at or before it)."""
    return next((g for g in reversed(segments) if g[0] <= step), [0, step + 1])


def warmup_steps(segment: Segment, s: TrainSettings) -> int:
    """A plain segment's warmup steps; a refit has none (it goes on from its predecessor)."""
    return 0 if len(segment) > 2 else int(round(s.warmup_ratio * (segment[1] - segment[0])))


def factor(segments: list[Segment], step: int, s: TrainSettings) -> float:
    """The LR multiplier of `step` within its schedule segment."""
    g = segment_at(segments, step)
    start, end = int(g[0]), int(g[1])
    if len(g) > 2:
        return decay_factor(_refit_progress(g, step), s.schedule)
    return lr_factor(step - start, end - start, warmup_steps(g, s), s.schedule)


def progress(segments: list[Segment], step: int, s: TrainSettings) -> float | None:
    """How far into its decay `step` is (0 to 1); None while a plain segment still warms up."""
    g = segment_at(segments, step)
    if len(g) > 2:
        return _refit_progress(g, step)
    start, end, warmup = int(g[0]), int(g[1]), warmup_steps(g, s)
    if step - start < warmup:
        return None
    return decay_progress(step - start, end - start, warmup)


def _refit_progress(g: Segment, step: int) -> float:
    start, end, p0 = int(g[0]), int(g[1]), float(g[2])
    return min(1.0, p0 + (1.0 - p0) * (step - start) / max(1, end - start))


def refit(segments: list[Segment], step: int, end: int, s: TrainSettings) -> Segment:
    """The segment that ends the decay at `end` instead, going on from where it is at `step`."""
    p = progress(segments, step, s)
    return [step, end, round(p or 0.0, 6)]


# ----------------------------------------------------------------------------- the budget

REFIT_WINDOW = 100  # steps whose mean time projects the rest (long enough to average batch lengths)
REFIT_MIN_STEPS = 50  # steps measured before (and between) refits
REFIT_TOLERANCE = 0.03  # of the time left: a projected miss smaller than this is noise
REFIT_FILL = 0.98  # of the time left a refit plans for (the stop guard takes the rest)


@dataclass
class Projection:
    """What the budget projected when it refitted the schedule."""

    end: int  # the schedule's new end step
    step_s: float  # mean seconds per step over the recent window
    left_s: float  # seconds of the budget left for steps (after the final evaluation and checkpoint)


class Budget:
    """The time budget as the loop spends it: stops the steps before the next one would end past
    it (leaving room for the last evaluation, the full validation pass and the final checkpoint,
    measured as they happen, estimated until then), and refits the schedule when the measured
    steps say it would end elsewhere."""

    def __init__(self, limit_s: float, n_eval: int, n_val: int, state_bytes: int, s: TrainSettings,
                 max_end: int) -> None:
        self.limit_s = limit_s  # seconds of training (elapsed_s) this process may use
        self.n_eval, self.n_val, self.batch_size = n_eval, n_val, s.batch_size
        self.eval_every, self.save_every, self.save_interval_s = s.eval_every, s.save_every, s.save_interval_s
        self.max_end = max_end  # a refit never plans past the plan's step limit (the epochs auto allows)
        self.eval_s_per_example: float | None = None
        self.checkpoint_s = state_bytes / WRITE_BYTES_PER_S
        self.recent: deque[float] = deque(maxlen=REFIT_WINDOW)
        self.measured_since = 0  # steps measured since this process started or last refitted

    @classmethod
    def of(cls, plan: Plan, startup_s: float, trainable: int) -> Budget | None:
        s = plan.settings
        if s.time_budget_s is None:
            return None
        n_full = len(plan.val) - len(plan.eval_indices)  # the final pass adds what the subsample left out
        return cls(s.time_budget_s - startup_s, len(plan.eval_indices), n_full, checkpoint_bytes(trainable), s,
                   plan.step_limit)

    def stepped(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.measured_since += 1

    def evaluated(self, seconds: float, examples: int) -> None:
        self.eval_s_per_example = seconds / max(1, examples)

    def checkpointed(self, seconds: float) -> None:
        self.checkpoint_s = seconds

    def _per_example(self, step_s: float) -> float:
        if self.eval_s_per_example is None:  # no evaluation yet: a forward is ~1/3 of a training step
            return step_s / self.batch_size / 3
        return self.eval_s_per_example

    def _tail(self, step_s: float) -> float:
        """The last evaluation, the rest of the full validation pass and the final checkpoint."""
        return self._per_example(step_s) * (self.n_eval + self.n_val) + self.checkpoint_s

    def out_of_time(self, elapsed_s: float, step_s: float) -> bool:
        return elapsed_s + step_s + self._tail(step_s) > self.limit_s

    def _per_step(self, step_s: float) -> float:
        """A step's share of the whole: its own time, the evaluations and checkpoints in its cadence."""
        evals = self._per_example(step_s) * self.n_eval / max(1, self.eval_every)
        if self.save_every is not None:
            saves = self.checkpoint_s / max(1, self.save_every)
        else:
            saves = self.checkpoint_s * step_s / max(1e-9, self.save_interval_s)
        return step_s + evals + saves

    def refit(self, step: int, end: int, elapsed_s: float) -> Projection | None:
        """A new end for the schedule when the steps measured since the last refit say the run
        would miss the budget's end by more than REFIT_TOLERANCE of the time left (either way:
        slower steps bring it nearer, faster ones back towards the plan's)."""
        if self.measured_since < REFIT_MIN_STEPS:
            return None
        step_s = statistics.fmean(self.recent)
        per_step = self._per_step(step_s)
        left = self.limit_s - elapsed_s - self._tail(step_s)
        need = (end - step) * per_step
        if left <= 0 or abs(need - left) <= REFIT_TOLERANCE * left:
            return None
        new_end = min(self.max_end, step + int(REFIT_FILL * left // per_step))
        if new_end <= step or new_end == end:
            return None
        self.measured_since = 0
        return Projection(new_end, step_s, left)
