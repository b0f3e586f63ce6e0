"""Decoded samples kept in memory, up to a byte budget, so each epoch after the first skips the
read, checksum and decode of every sample that fits.

The first samples decoded stay until the process ends; nothing is evicted. Training visits every
sample once per epoch in random order, so an LRU policy on a dataset larger than the budget would
evict each sample before its next visit and never hit, while keeping the first ones hits on
budget / dataset of all reads. Values are numpy arrays made read-only: a caller that tried to
modify a kept array in place would otherwise change every later epoch's sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MIB = 1 << 20


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return []


class DecodedMemo:
    """get(key, load): `load()`'s value for `key`, kept while the kept values' arrays total at
    most `budget_mib` MiB (0 keeps nothing). One per process: DataLoader workers each fill their
    own copy (forked from an empty one), so the memory used is at most the budget per process."""

    def __init__(self, budget_mib: int):
        self.budget = int(budget_mib) * MIB
        self.used = 0
        self._kept: dict = {}

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key, load: Callable[[], Any]):
        if key in self._kept:
            return self._kept[key]
        value = load()
        arrays = _arrays(value)
        size = sum(a.nbytes for a in arrays)
        if self.used + size <= self.budget:
            for a in arrays:
                a.flags.writeable = False
            self._kept[key] = value
            self.used += size
        return value
