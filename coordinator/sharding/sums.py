"""A shard's partial sum for one round, and the merge of K of them. Pure numpy.

    PartialSum: sums[name] = sum_i w_i * float64(delta_i[name])  (in acceptance order)
                weight = sum_i w_i,  count = number of updates

`add` does WeightedMean.add's arithmetic (aggregate.py: copy to float64, times w, then +=),
and `merge` adds the shards' sums in shard index order before one division, so the leader's
mean is a fixed function of (which updates each shard accepted, in which order): a reference
can recompute it bit for bit from the store. Bytes: every tensor's float64 little-endian
buffer, in sorted name order, shapes from the manifest; weight and count live in columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Params = dict[str, np.ndarray]


@dataclass
class PartialSum:
    sums: Params = field(default_factory=dict)
    weight: float = 0.0
    count: int = 0

    def add(self, delta: Params, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        for name, value in delta.items():
            scaled = np.array(value, np.float64)  # exact: float32 -> float64
            scaled *= weight
            if name in self.sums:
                self.sums[name] += scaled
            else:
                self.sums[name] = scaled
        self.weight += weight
        self.count += 1

    def to_bytes(self) -> bytes:
        return b"".join(np.ascontiguousarray(self.sums[k], "<f8").tobytes() for k in sorted(self.sums))

    @classmethod
    def from_bytes(cls, data: bytes, shapes: dict[str, tuple[int, ...]], weight: float, count: int) -> PartialSum:
        out, at = {}, 0
        for name in sorted(shapes):
            n = int(np.prod(shapes[name], dtype=np.int64))
            out[name] = np.frombuffer(data, "<f8", n, at).reshape(shapes[name]).astype(np.float64)
            at += 8 * n
        if at != len(data):
            raise ValueError(f"partial sum of {len(data)} bytes does not fit shapes needing {at}")
        return cls(out, weight, count)


def merge(partials: list[PartialSum]) -> PartialSum:
    """The shards' sums added in list (shard index) order; empty shards skipped."""
    total = PartialSum()
    for part in partials:
        if part.count == 0:
            continue
        for name, value in part.sums.items():
            if name in total.sums:
                total.sums[name] += value
            else:
                total.sums[name] = value.copy()
        total.weight += part.weight
        total.count += part.count
    return total


def mean(total: PartialSum) -> Params:
    """What MeanAggregator.result returns for the same sum: (sum / weight) as float32."""
    if total.count == 0:
        raise ValueError("no contributions to average")
    return {k: (v / total.weight).astype(np.float32) for k, v in total.sums.items()}
