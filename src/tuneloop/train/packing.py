"""Packing rows into bins of max_length without letting samples see each other.

```
rows (lengths)     A=5  B=3  C=2  D=4        max_length = 8, best-fit-decreasing
bins               [A A A A A B B B]  [D D D D C C]
position_ids       [0 1 2 3 4 0 1 2]  [0 1 2 3 0 1]      restart at each sample
attention          block-diagonal causal: a token attends only to earlier tokens of its own sample

    A A A A A B B B
  A ■
  A ■ ■
  A ■ ■ ■
  A ■ ■ ■ ■
  A ■ ■ ■ ■ ■
  B           ■
  B           ■ ■
  B           ■ ■ ■
```

The mask is never materialised here: the collator sends `position_ids` (no attention mask) and transformers
derives the sample boundaries from where the positions restart — varlen kernels under flash attention, a
block-diagonal mask under SDPA/eager/flex attention (in forwards without a KV cache, as training runs; tested
in tests/test_train_packing.py). `seq_lengths` travels with each bin for that collator.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class PackingError(ValueError):
    """A row longer than a bin: tokenization should have windowed or quarantined it."""


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of rows grouped into bins of `capacity` tokens, longest rows first, each into the fullest bin it fits.

    >>> best_fit_decreasing([5, 3, 2, 4], 8)
    [[0, 1], [3, 2]]
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if length > capacity:
            raise PackingError(f"row {index} has {length} tokens, more than the bin size {capacity}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            remaining, bin_index = free.pop(slot)
            bins[bin_index].append(index)
            bisect.insort(free, (remaining - length, bin_index))
        else:
            bins.append([index])
            bisect.insort(free, (capacity - length, len(bins) - 1))
    return bins


def position_ids(seq_lengths: Sequence[int]) -> list[int]:
    """Positions restarting at zero for each sample of a bin.

    >>> position_ids([3, 2])
    [0, 1, 2, 0, 1]
    """
    return [p for length in seq_lengths for p in range(length)]


@dataclass
class PackingReport:
    rows: int
    bins: int
    tokens: int
    capacity: int

    @property
    def efficiency(self) -> float:
        """Share of real (non-pad) tokens if every bin were padded to max_length."""
        return self.tokens / (self.bins * self.capacity) if self.bins else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "bins": self.bins, "tokens": self.tokens, "max_length": self.capacity,
                "efficiency": round(self.efficiency, 4)}


def pack_rows(rows: Sequence[Any], max_length: int) -> tuple[list[dict[str, list[int]]], PackingReport]:
    """Encoded rows (with `input_ids` and `labels`) → bins `{input_ids, labels, seq_lengths}` and their efficiency."""
    lengths = [len(r.input_ids) for r in rows]
    bins = best_fit_decreasing(lengths, max_length)
    packed = []
    for members in bins:
        packed.append({
            "input_ids": [t for i in members for t in rows[i].input_ids],
            "labels": [t for i in members for t in rows[i].labels],
            "seq_lengths": [lengths[i] for i in members],
        })
    return packed, PackingReport(len(rows), len(bins), sum(lengths), max_length)


def unpacked(rows: Sequence[Any]) -> list[dict[str, list[int]]]:
    """One row per example (packing off): the same columns, one sample per row."""
    return [{"input_ids": list(r.input_ids), "labels": list(r.labels), "seq_lengths": [len(r.input_ids)]} for r in rows]
