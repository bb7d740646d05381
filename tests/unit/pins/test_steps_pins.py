"""Pins which examples each optimizer step sees and how micro-batches are laid out.

`plan_steps(n, batch, total, seed)`: a fresh seeded shuffle per epoch, cut into batches (the
last one of an epoch may be partial, never topped up from the next epoch), `total` steps in
all. `steps_per_epoch` = ceil(n / batch), at least 1. `count_loss_tokens` counts scored targets
(labels 1.., label 0 is never a target). Padded and packed micro-batches of hand-made examples
are pinned tensor by tensor, with their loss/token counts.
"""

from __future__ import annotations

import math

import pytest
import torch

from tunecraft.data.batching import (
    MIN_SHARED_PREFIX,
    count_loss_tokens,
    live_length,
    packed_batches,
    padded_batches,
    plan_steps,
    shifted_labels,
    steps_per_epoch,
)
from tunecraft.data.render import IGNORE, TokenizedExample

I = IGNORE  # noqa: E741  (short, so the literal label rows below stay readable)


# ---- steps_per_epoch / plan_steps ---------------------------------------------------------------

@pytest.mark.parametrize(
    "n,batch,steps",
    [(10, 4, 3), (8, 4, 2), (9, 1, 9), (5, 10, 1), (1, 4, 1), (64, 8, 8), (65, 8, 9), (0, 4, 1)],
)
def test_steps_per_epoch(n: int, batch: int, steps: int) -> None:
    assert steps_per_epoch(n, batch) == steps


@pytest.mark.parametrize("n,batch", [(10, 4), (8, 4), (9, 1), (5, 10), (7, 3), (64, 8)])
def test_every_example_once_per_epoch_with_a_partial_last_batch(n: int, batch: int) -> None:
    per_epoch = steps_per_epoch(n, batch)
    plan = plan_steps(n, batch, 3 * per_epoch, seed=0)
    assert len(plan) == 3 * per_epoch
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    for epoch in range(3):
        steps = plan[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert [len(s) for s in steps] == sizes
        assert sorted(i for s in steps for i in s) == list(range(n))


def test_literal_plan_seed_0() -> None:
    assert plan_steps(10, 4, 3, seed=0) == [[7, 8, 1, 5], [3, 4, 2, 0], [9, 6]]
    assert plan_steps(10, 4, 1, seed=0)[0] == [7, 8, 1, 5]  # the first step, pinned
    assert plan_steps(5, 2, 7, seed=0) == [[2, 1], [0, 4], [3], [2, 3], [4, 0], [1], [2, 1]]


def test_each_epoch_is_shuffled_anew() -> None:
    plan = plan_steps(10, 4, 8, seed=0)
    assert plan[3:6] == [[6, 8, 9, 7], [5, 3, 0, 4], [1, 2]]  # epoch 1, pinned
    assert plan[3:6] != plan[0:3]


def test_order_is_seeded() -> None:
    assert plan_steps(10, 4, 6, seed=3) == plan_steps(10, 4, 6, seed=3)
    assert plan_steps(10, 4, 3, seed=2) == [[1, 3, 9, 8], [2, 5, 0, 7], [4, 6]]
    plans = {tuple(map(tuple, plan_steps(20, 5, 4, seed=s))) for s in range(5)}
    assert len(plans) == 5


def test_fractional_epochs_cut_the_last_epoch_short() -> None:
    # 1.5 epochs of 10 examples in batches of 4: 3 steps, then the first 2 of the next epoch.
    total = math.ceil(1.5 * steps_per_epoch(10, 4))
    assert total == 5
    plan = plan_steps(10, 4, total, seed=0)
    assert plan == [[7, 8, 1, 5], [3, 4, 2, 0], [9, 6], [6, 8, 9, 7], [5, 3, 0, 4]]
    seen_twice = {i for s in plan[3:] for i in s}
    assert len(seen_twice) == 8 and not {1, 2} & seen_twice


def test_a_longer_plan_extends_a_shorter_one() -> None:
    """Resuming relies on step k's examples not depending on how many steps follow."""
    long = plan_steps(7, 3, 11, seed=4)
    for total in (1, 2, 3, 4, 7, 10):
        assert plan_steps(7, 3, total, seed=4) == long[:total]


def test_empty_and_zero_step_plans() -> None:
    assert plan_steps(0, 4, 5, seed=0) == []
    assert plan_steps(10, 4, 0, seed=0) == []


# ---- token counts -------------------------------------------------------------------------------

A = TokenizedExample([1, 2, 3, 4, 5, 6], [I, I, I, 4, 5, I])  # a chat turn, then a loss-free tail
B = TokenizedExample([7, 8, 9], [I, 8, 9])
C = TokenizedExample([10, 11, 12, 13], [10, 11, 12, 13])  # raw text: loss everywhere
EXAMPLES = [A, B, C]


def test_count_loss_tokens_skips_the_first_label() -> None:
    assert [count_loss_tokens(e) for e in EXAMPLES] == [2, 2, 3]
    assert [e.n_loss for e in EXAMPLES] == [2, 2, 4]  # label 0 is no target: 4 != 3 for C
    assert count_loss_tokens(TokenizedExample([5], [5])) == 0


def test_shifted_labels_and_live_length() -> None:
    assert shifted_labels([I, I, I, 4, 5, I]) == [I, I, 4, 5, I, I]
    assert [live_length(e) for e in EXAMPLES] == [4, 2, 3]
    assert live_length(TokenizedExample([1, 2, 3], [I, I, I])) == 1  # at least one position


# ---- padded layout ------------------------------------------------------------------------------

def test_padded_micro_batches_literal() -> None:
    first, second = padded_batches(EXAMPLES, [2, 0, 1], micro_batch_size=2, pad_id=0)
    assert first.input_ids.tolist() == [[10, 11, 12, 13, 0, 0], [1, 2, 3, 4, 5, 6]]
    assert first.labels.tolist() == [[11, 12, 13, I, I, I], [I, I, 4, 5, I, I]]
    mask = first.attention_mask
    assert mask is not None and mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert first.position_ids.tolist() == [[0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 4, 5]]
    assert (first.n_loss, first.n_tokens, first.n_computed) == (5, 10, 12)
    assert first.input_ids.dtype == torch.long and first.layout is None
    assert second.input_ids.tolist() == [[7, 8, 9]] and second.labels.tolist() == [[8, 9, I]]
    assert (second.n_loss, second.n_tokens, second.n_computed) == (2, 3, 3)


@pytest.mark.parametrize("micro,count", [(1, 3), (2, 2), (3, 1), (8, 1)])
def test_micro_batch_counts(micro: int, count: int) -> None:
    padded = padded_batches(EXAMPLES, [0, 1, 2], micro, pad_id=0)
    packed = packed_batches(EXAMPLES, [0, 1, 2], micro)
    assert len(padded) == len(packed) == count
    # The step's loss-bearing tokens are the same whatever the layout.
    assert sum(b.n_loss for b in padded) == sum(b.n_loss for b in packed) == 7
    assert sum(b.n_tokens for b in padded) == sum(b.n_tokens for b in packed) == 13


# ---- packed layout ------------------------------------------------------------------------------

def test_packed_micro_batches_literal() -> None:
    first, second = packed_batches(EXAMPLES, [2, 0, 1], micro_batch_size=2)
    # One flat row, each example cut after its last scored target, positions restarting.
    assert first.input_ids.tolist() == [[10, 11, 12, 1, 2, 3, 4]]
    assert first.labels.tolist() == [[11, 12, 13, I, I, 4, 5]]
    assert first.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert first.attention_mask is None
    assert (first.n_loss, first.n_tokens, first.n_computed) == (5, 10, 7)
    assert first.layout is not None and first.layout.shared_prefix == 0
    assert second.input_ids.tolist() == [[7, 8]] and second.labels.tolist() == [[8, 9]]
    assert (second.n_loss, second.n_tokens, second.n_computed) == (2, 3, 2)


def _with_prefix() -> list[TokenizedExample]:
    prefix = list(range(1, 10))  # 9 loss-free tokens shared by both (a system prompt)
    return [
        TokenizedExample(prefix + [20, 21], [I] * 9 + [20, 21]),
        TokenizedExample(prefix + [30, 31, 32], [I] * 9 + [I, 31, 32]),
    ]


def test_shared_prefix_is_stored_once() -> None:
    (batch,) = packed_batches(_with_prefix(), [0, 1], micro_batch_size=2)
    # Label 9 of the first example bears loss, so position 8 predicts it: the prefix is 8 long.
    assert MIN_SHARED_PREFIX == 8 and batch.layout is not None and batch.layout.shared_prefix == 8
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 9, 30, 31]]
    assert batch.labels.tolist() == [[I] * 8 + [20, 21, I, 31, 32]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9, 10]]
    assert (batch.n_loss, batch.n_tokens, batch.n_computed) == (4, 23, 13)


def test_without_prefix_sharing_every_example_is_whole() -> None:
    (batch,) = packed_batches(_with_prefix(), [0, 1], micro_batch_size=2, share_prefix=False)
    assert batch.layout is not None and batch.layout.shared_prefix == 0
    assert (batch.n_loss, batch.n_tokens, batch.n_computed) == (4, 23, 21)
    assert batch.position_ids.tolist() == [list(range(10)) + list(range(11))]
    (padded,) = padded_batches(_with_prefix(), [0, 1], 2, pad_id=0)
    assert (padded.n_loss, padded.n_tokens, padded.n_computed) == (4, 23, 24)
