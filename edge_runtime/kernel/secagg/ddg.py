"""The distributed discrete Gaussian (Kairouz, Liu, Steinke 2021), the device's half: what a
device under distributed DP masks instead of quantize.encode's offset codes.

    clip:    x <- x * min(1, S / ||x||_2)               S: the round's L2 bound (after error feedback)
    scale:   x <- x / gamma                             gamma: the integer grid's step, real units
    rotate:  y = quantize.rotate(x, seed)               the randomized Hadamard rotation (exists)
    clip:    y <- clip(y, -c / gamma, c / gamma)        the shared L-inf clip; it only lowers ||y||_2,
                                                        and it bounds each coordinate for the field
    round:   r = randomized rounding of y, redrawn until ||r||_2 <= rounded_bound(S / gamma, d, beta)
    noise:   v = r + N_Z(0, sigma^2)^d                  the device's share of the discrete Gaussian
    wrap:    v mod 2^m                                  what the device masks

The coordinator unmasks sum_i v_i mod 2^m, reads it as a signed integer (the field is sized so
that the noised sum of every asked device stays inside [-2^(m-1), 2^(m-1)) except with
probability 2^-40: coordinator/dp/distributed.py), multiplies by gamma and unrotates. It only
ever sees the noised sum: the noise is added on the device before masking.

Conditional rounding (the paper's Sec. 4.2): plain randomized rounding can inflate the norm by
up to sqrt(d); redrawing until the norm is within the bound below keeps the sensitivity
near S / gamma, and one draw succeeds with probability >= 1 - beta.

The sampler is Canonne, Kamath, Steinke 2020 (Algorithm 3): discrete Laplace proposals of
scale t = floor(sigma) + 1 (a difference of two geometric variables), accepted with probability
exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). Exact up to float arithmetic in the acceptance test;
vectorized, the RNG passed in.
"""

from __future__ import annotations

import math

import numpy as np

from . import quantize

DEFAULT_BETA = math.exp(-0.5)  # the paper's choice: a draw of the rounding is kept with prob >= 1 - e^-0.5
MAX_ROUNDING_DRAWS = 1000  # P(all fail) <= beta^1000: a device that gets there has a bug, and declines
MAX_SAMPLING_PASSES = 64  # the sampler's passes, at most: one or two fill it (acceptance >= ~0.6)


def rounded_bound(scaled_norm: float, dimension: int, beta: float = DEFAULT_BETA) -> float:
    """Delta_2: the L2 bound on the conditionally rounded vector (Kairouz et al. 2021, Thm. 1):
    min(sqrt(a^2 + d/4 + sqrt(2 ln(1/beta)) (a + sqrt(d)/2)), a + sqrt(d)), a = S / gamma."""
    if not (scaled_norm > 0 and dimension >= 1 and 0 < beta < 1):
        raise ValueError("need S / gamma > 0, d >= 1 and 0 < beta < 1")
    a, d = scaled_norm, dimension
    inflated = a * a + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2)
    return min(math.sqrt(inflated), a + math.sqrt(d))


def discrete_laplace(scale: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """P(Y = y) proportional to exp(-|y| / scale), y in Z (int64)."""
    p = -math.expm1(-1.0 / scale)  # 1 - e^(-1/t)
    return rng.geometric(p, size) - rng.geometric(p, size)


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """N_Z(0, sigma^2): P(Y = y) proportional to exp(-y^2 / (2 sigma^2)), y in Z (int64)."""
    # sigma^2 must not underflow: with sigma = 1e-300 (the spec's dp_sigma is the coordinator's
    # word) the acceptance test divided by 0, accepted nothing, and the device looped for good.
    if not (sigma > 0 and math.isfinite(sigma) and sigma * sigma > 0):
        raise ValueError(f"sigma must be a positive finite number whose square is > 0, got {sigma!r}")
    t = math.floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    filled = 0
    for _ in range(MAX_SAMPLING_PASSES):
        if filled >= size:
            return out
        want = size - filled
        batch = int(want * 1.6) + 16  # acceptance is >= ~0.6 for every sigma: one or two passes
        y = discrete_laplace(t, batch, rng)
        keep = rng.random(batch) < np.exp(-np.square(np.abs(y) - sigma * sigma / t) / (2 * sigma * sigma))
        got = y[keep][:want]
        out[filled:filled + got.size] = got
        filled += got.size
    if filled < size:
        raise ValueError(f"discrete Gaussian sampler (sigma {sigma:g}) accepted too few draws in "
                         f"{MAX_SAMPLING_PASSES} passes")
    return out


def conditional_round(y: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Randomized rounding of y to Z^d (unbiased per draw), redrawn until ||r||_2 <= bound."""
    low = np.floor(y)
    frac = y - low
    for _ in range(MAX_ROUNDING_DRAWS):
        r = low + (rng.random(y.shape) < frac)
        if float(np.dot(r, r)) <= bound * bound:
            return r.astype(np.int64)
    raise ValueError(f"conditional rounding: no draw within the norm bound {bound:g} in {MAX_ROUNDING_DRAWS}")


def scaled_rotated(x: np.ndarray, seed: int, clip_norm: float, clip_range: float, gamma: float) -> np.ndarray:
    """Steps clip, scale, rotate, L-inf clip: the real vector the rounding gets (norm <= S / gamma)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot encode NaN/Inf values")
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        x = x * (clip_norm / norm)
    y = quantize.rotate(x / gamma, seed)
    top = clip_range / gamma
    return np.clip(y, -top, top)


def encode(x: np.ndarray, seed: int, clip_norm: float, clip_range: float, gamma: float, sigma: float,
           field_bits: int, rng: np.random.Generator, beta: float = DEFAULT_BETA) -> tuple[np.ndarray, np.ndarray]:
    """(the field values v mod 2^m (uint32) the device masks, the rounded vector r before the
    noise (int64)). sigma = 0 adds no noise (tests; a private round always announces sigma > 0)."""
    if not (0 < clip_norm / gamma < 2.0 ** 40 and 0 < clip_range / gamma < 2.0 ** 40):
        raise ValueError("distributed DP: S / gamma and c / gamma must lie in (0, 2^40)")  # an absurd grid
    y = scaled_rotated(x, seed, clip_norm, clip_range, gamma)
    r = conditional_round(y, rounded_bound(clip_norm / gamma, y.size, beta), rng)
    v = r + discrete_gaussian(sigma, r.size, rng) if sigma > 0 else r
    return (v & ((1 << field_bits) - 1)).astype(np.uint32), r


def count_coordinate(norm: float, clip_norm: float, scale: int, sigma: float, field_bits: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Adaptive clipping's bit (Andrew et al. 2021) in the field: (+scale/2 if norm <= S else
    -scale/2) + N_Z(0, sigma^2), mod 2^m, as one uint32. The survivors' sum decodes (count_from)
    to sum_i (b_i - 1/2) plus noise of std sigma sqrt(k) / scale in count units; its sensitivity
    (1/2 in count units, scale / 2 in the field) joins the update's in one L2 bound
    (coordinator/dp/distributed.py)."""
    half = scale // 2
    value = (half if norm <= clip_norm else -half) + int(discrete_gaussian(sigma, 1, rng)[0])
    return np.array([value & ((1 << field_bits) - 1)], dtype=np.uint32)


def count_from(total: int, scale: int, field_bits: int) -> float:
    """The noised, centred count sum_i (b_i - 1/2) + noise from the count coordinate's field sum."""
    return float(signed(np.array([total]), field_bits)[0]) / scale


def signed(total: np.ndarray, field_bits: int) -> np.ndarray:
    """The field sum read as a signed integer in [-2^(m-1), 2^(m-1))."""
    t = np.asarray(total, dtype=np.int64) & ((1 << field_bits) - 1)
    return np.where(t >= 1 << (field_bits - 1), t - (1 << field_bits), t)


def decode(total: np.ndarray, seed: int, gamma: float, field_bits: int) -> np.ndarray:
    """The real-valued noised sum (unrotated, un-scaled) from the unmasked field sum."""
    return quantize.unrotate(signed(total, field_bits).astype(np.float64) * gamma, seed)
