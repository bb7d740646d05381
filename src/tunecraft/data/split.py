"""Seeded train/validation split, stable under reordering of unrelated rows."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def rank(seed: int, key: str) -> bytes:
    """A row's place in the seeded split order: sha256 of "seed|content"."""
    return hashlib.sha256(f"{seed}|{key}".encode("utf-8")).digest()


def split_indices(keys: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Return (train, val) indices; val holds round(fraction * n) rows, at least 1 if n >= 2.

    Rows are ranked by a seeded hash of their content, so the split does not depend on file
    order and identical rows land on the same side (a duplicate can't leak across the split).
    """
    return split_ranked([rank(seed, k) for k in keys], keys, fraction)


def split_ranked(ranks: Sequence[bytes], groups: Sequence[Hashable], fraction: float) -> tuple[list[int], list[int]]:
    """`split_indices` from each row's `rank` and content group, computed by the caller: a streamed
    raw-text file passes 16-byte content digests as groups instead of holding every text (see
    data.textfile.split_keys)."""
    n = len(ranks)
    if n < 2:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = sorted(range(n), key=lambda i: (ranks[i], i))
    # Keep whole groups of identical keys together: extend the cut past equal keys.
    val_set: set[int] = set(order[:n_val])
    val_groups = {groups[i] for i in val_set}
    val_set |= {i for i in range(n) if groups[i] in val_groups}
    if len(val_set) >= n:  # everything identical: fall back to a plain cut
        val_set = set(order[:n_val])
    train = [i for i in range(n) if i not in val_set]
    val = sorted(val_set)
    return train, val
