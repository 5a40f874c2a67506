"""The device's held-out scores against a plain loop over the rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import NonFiniteValues
from fedge.edge_runtime.scores import accuracy, cross_entropy


def test_accuracy_and_cross_entropy_match_a_plain_loop():
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(50, 4)) * 3, rng.integers(0, 4, 50)
    right = sum(max(range(4), key=lambda c: row[c]) == label for row, label in zip(logits, y))
    assert accuracy(logits, y) == pytest.approx(right / 50)
    loss = sum(math.log(sum(math.exp(v) for v in row)) - row[label] for row, label in zip(logits, y)) / 50
    assert cross_entropy(logits, y) == pytest.approx(loss, rel=1e-12)
    assert accuracy(None, y) is None and accuracy(logits[:0], y[:0]) is None


def test_non_finite_rows_are_refused_or_counted_wrong():
    logits = np.array([[np.nan, 1.0], [0.0, 2.0], [np.inf, -np.inf], [5.0, 0.0]])
    y = np.array([0, 1, 0, 0])  # argmax says 0, 1, 0, 0: all "right" when NaN and inf rows are believed
    with pytest.raises(NonFiniteValues, match="2 of the 4"):
        accuracy(logits, y)
    assert accuracy(logits, y, strict=False) == 0.5  # the two finite rows are right, the others wrong
