"""Whether a data file's test split is on another scale than its training split (pure).

A file whose x_test was saved on another scale than its x_train (one split divided by 255 and
not the other; x_train standardized and x_test raw) loaded on both loaders, and a device scored
a model on inputs hundreds of times off the scale it trained on, near chance, with no word.

The scale of a split is the root mean square of its values, uncentered, as the loaders read
them (after as_features: uint8 is x / 255). Uncentered, because a device's training split may
hold one example (no spread to compare with) and a test split may hold classes its training
split lacks (a per-feature envelope of mean +- k std fires on honest data there). A scale
mistake multiplies every value, so it multiplies the ratio test / train by the same factor.
Measured (benchmarks/results/2026-12-06-test-scale, seeds 0-2; 16,677 honest files, each also
with a one-example training split: MNIST-5k and digits as `fedge data split` writes them, every
partition over 2-300 devices, feature skew included; Dirichlet 0.1 over 100 and 400 devices with
an unstratified holdout, so test splits hold classes training lacks; wine and breast-cancer raw
and standardized over 2-60 devices): honest ratios 0.225 to 4.43; x_test x 255, 78 and up;
x_test / 255 beside 0..255 x_train, 1 / 239 and below; raw x_test beside a standardized x_train
(wine, breast-cancer), 64 and up. RATIO_LIMIT sits near their geometric middle: 3.6 times the
honest extreme, 4 times below the nearest mistake. It does fire on 23 of 756 wine and
breast-cancer files standardized with their own 2-3 training examples (40-60 devices): a feature
with a near-zero training std puts their test values that far off, truly. Empty or all-zero
splits have no scale and are not compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Test / train RMS ratios beyond RATIO_LIMIT either way are reported (honest: 0.225 to 4.43; the
# mistakes: 64 and up, 1 / 239 and below; the module docstring says what was measured).
RATIO_LIMIT = 16.0


@dataclass(frozen=True)
class ScaleGap:
    """Two splits' scales (RMS of their values) and test / train."""

    train_rms: float
    test_rms: float

    @property
    def ratio(self) -> float:
        return self.test_rms / self.train_rms


def rms(x: np.ndarray) -> float:
    """Root mean square of x's values (float64 accumulation: float32 squares of 1e19 overflow)."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def scale_gap(x_train: np.ndarray, x_test: np.ndarray, limit: float = RATIO_LIMIT) -> ScaleGap | None:
    """The two splits' scales when test / train is beyond `limit` either way, else None. None
    also when either split is empty or all zeros: there is no scale to compare."""
    train, test = rms(x_train), rms(x_test)
    if not (train > 0 and test > 0 and math.isfinite(train) and math.isfinite(test)):
        return None
    gap = ScaleGap(train, test)
    return gap if gap.ratio > limit or gap.ratio < 1 / limit else None


def describe(gap: ScaleGap) -> str:
    """One line for the load's warning, after the file's name."""
    return (f"x_test's values are on another scale than x_train's (root mean square {gap.test_rms:.4g} against "
            f"{gap.train_rms:.4g}, {gap.ratio:.3g} times), so the model would be scored on inputs it never "
            f"trained on; save both splits on one scale (was one divided by 255, or standardized, and not the "
            f"other?)")
