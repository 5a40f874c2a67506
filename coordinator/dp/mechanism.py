"""The Gaussian mechanism of DP-FedAvg (McMahan et al. 2018, Algorithm 1 with the fixed denominator):

    clip:   Δ_i <- Δ_i * min(1, S / ||Δ_i||_2)                   (L2 over all shared params together)
    noise:  Σ <- Σ_i Δ_i + N(0, (z S)^2 I)
    mean:   Δ  <- Σ / W,   W = the expected cohort size, fixed before the round

Dividing by a fixed W instead of the number of reports keeps the sensitivity of the mean at S / W
whoever drops out; the estimate is unbiased when W is the expected number of reports. Pure
numpy; the RNG is passed in.
"""

from __future__ import annotations

import math

import numpy as np

Params = dict[str, np.ndarray]


def global_norm(delta: Params) -> float:
    """L2 norm over every array of the delta together."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values()))


def clip_to_norm(delta: Params, bound: float) -> tuple[Params, float]:
    """(delta scaled to L2 norm <= bound, the norm before). Invariant: global_norm(result) <= bound * (1 + 1e-6)."""
    if not bound > 0:
        raise ValueError(f"clip bound must be > 0, got {bound}")
    norm = global_norm(delta)
    scale = 1.0 if norm <= bound else bound / norm
    return {k: (np.asarray(v, np.float64) * scale) for k, v in delta.items()}, norm


def gaussian_noise(shapes: dict[str, tuple[int, ...]], stddev: float, rng: np.random.Generator) -> Params:
    """N(0, stddev^2) per coordinate, float64, one array per shared param."""
    if not stddev >= 0:
        raise ValueError(f"noise stddev must be >= 0, got {stddev}")
    return {k: rng.normal(0.0, stddev, size=shape) for k, shape in shapes.items()}


def noised_mean(clipped_sum: Params, noise_multiplier: float, clip_norm: float, expected_cohort: float,
                rng: np.random.Generator) -> Params:
    """(Σ clipped deltas + N(0, (zS)^2)) / W, float32 like the model. `clipped_sum` must already be
    a sum of deltas each clipped to clip_norm: the noise is calibrated to that sensitivity."""
    if not expected_cohort > 0:
        raise ValueError(f"expected cohort must be > 0, got {expected_cohort}")
    noise = gaussian_noise({k: np.shape(v) for k, v in clipped_sum.items()}, noise_multiplier * clip_norm, rng)
    return {k: ((np.asarray(v, np.float64) + noise[k]) / expected_cohort).astype(np.float32)
            for k, v in clipped_sum.items()}
