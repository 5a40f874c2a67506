"""Streaming weighted mean: memory stays O(model) however many clients report."""

from __future__ import annotations

import numpy as np


class WeightedMean:
    """Running sum of weight * tensor in float64; `mean()` divides by the total weight."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: dict[str, np.ndarray], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        for name, value in tensors.items():
            acc = self.sums.get(name)
            if acc is None:
                # asarray: a 0-d product is a numpy scalar, and `+=` on it would not update the dict.
                self.sums[name] = np.asarray(np.asarray(value, np.float64) * weight)
            else:
                acc += np.asarray(value, np.float64) * weight
        self.total_weight += weight
        self.count += 1

    def mean(self) -> dict[str, np.ndarray]:
        if self.count == 0:
            raise ValueError("no contributions to average")
        return {k: (v / self.total_weight).astype(np.float32) for k, v in self.sums.items()}


def weighted_mean_naive(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The textbook formula, for tests: sum_i w_i x_i / sum_i w_i."""
    total = float(sum(weights))
    return {k: sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights)) / total for k in updates[0]}
