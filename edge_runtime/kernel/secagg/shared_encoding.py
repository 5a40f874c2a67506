"""One device's update on the round's shared grid, and the cohort's mean back from the sum.

    full      = delta + residual                 error feedback: what earlier rounds did not send
    sent part = full[shared subset]              random-k from the round's seed (subset.py)
    values    = quantize.encode(sent part)       rotation, shared L-inf clip, b bits, offset
    residual  = full - what the values decode to (zero off the subset is not sent: all of it stays)

The coordinator decodes the survivors' field sum over the subset, divides by their number and
puts it back at the subset's coordinates (zeros elsewhere). Decoding is linear, so that mean is
exactly the mean of what each device's values decode to: the residual a device keeps is
exactly what the cohort's sum did not get from it.

Under distributed DP (spec.distributed_dp) the values are ddg.encode's instead: clip to S after
the residual is added (so the bound holds for what is sent), scale, rotate, round, noise, mod
2^m. The residual is what the rounded vector before the noise decodes to subtracted from the
full vector: the noise is never fed back.
"""

from __future__ import annotations

import numpy as np

from . import ddg, quantize
from .messages import SecAggSpec
from .subset import shared_coordinates


def encode_update(delta: np.ndarray, residual: np.ndarray | None, spec: SecAggSpec,
                  rng: np.random.Generator, norm: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(field values of the subset, the new residual over all coordinates). `norm`: the norm the
    device's own clip saw before clipping (Update.metrics["norm"]), which adaptive clipping's bit
    compares with S; None: the norm of what reaches ddg.encode's clip."""
    full = np.asarray(delta, dtype=np.float64).reshape(-1)
    if residual is not None:
        full = full + np.asarray(residual, dtype=np.float64).reshape(-1)
    idx = shared_coordinates(full.size, spec.keep_fraction, spec.rotation_seed)
    left = full.copy()
    if spec.distributed_dp:
        values, rounded = ddg.encode(full[idx], spec.rotation_seed, spec.dp_clip_norm, spec.clip_range, spec.dp_gamma,
                                     spec.dp_sigma, spec.field_bits, rng)
        left[idx] -= quantize.unrotate(rounded * spec.dp_gamma, spec.rotation_seed)
        if spec.dp_count_scale:  # adaptive clipping: was the update's norm within S?
            seen = float(np.linalg.norm(full[idx])) if norm is None else norm
            bit = ddg.count_coordinate(seen, spec.dp_clip_norm, spec.dp_count_scale, spec.dp_sigma, spec.field_bits,
                                       rng)
            values = np.concatenate([values, bit])
        return values, left
    values = quantize.encode(full[idx], spec.rotation_seed, spec.clip_range, spec.bits, rng)
    left[idx] -= quantize.decode(values, 1, spec.rotation_seed, spec.clip_range, spec.bits)
    return values, left


def subset_size(dimension: int, spec: SecAggSpec) -> int:
    """Coordinates of the shared subset (the update's part of what a device sends)."""
    return shared_coordinates(dimension, spec.keep_fraction, spec.rotation_seed).size


def sent_size(dimension: int, spec: SecAggSpec) -> int:
    """Coordinates a device sends: the subset, then the clipped-count coordinate if any."""
    return subset_size(dimension, spec) + spec.count_coordinates


def decode_count(total: np.ndarray, spec: SecAggSpec) -> float | None:
    """Adaptive clipping: the noised, centred count sum_i (b_i - 1/2) + noise; None without it."""
    if not spec.dp_count_scale:
        return None
    return ddg.count_from(int(total[-1]), spec.dp_count_scale, spec.field_bits)


def decode_mean(total: np.ndarray, count: int, dimension: int, spec: SecAggSpec) -> np.ndarray:
    """The survivors' mean over all coordinates from their field sum over the subset (and the
    count coordinate after it, which decode_count reads)."""
    idx = shared_coordinates(dimension, spec.keep_fraction, spec.rotation_seed)
    out = np.zeros(dimension)
    total = total[:idx.size]
    if spec.distributed_dp:
        out[idx] = ddg.decode(total, spec.rotation_seed, spec.dp_gamma, spec.field_bits) / count
    else:
        out[idx] = quantize.decode(total, count, spec.rotation_seed, spec.clip_range, spec.bits) / count
    return out


def implausible(total: np.ndarray, count: int, spec: SecAggSpec) -> str | None:
    """Why `total` cannot be the field sum of `count` devices' offset codes, or None: a
    coordinate above count * (2^b - 2), the most they sum to (quantize: v in [0, 2^b - 2]; the
    field is sized for every device asked, so an honest sum never wraps). A sum unmasked with a
    wrong self seed (recovery.py) is off by a uniform field vector, so each coordinate is over
    with probability 1 - count * (2^b - 2) / 2^m (2% to 38% at n = 5 to 1,000, b = 16), but only
    2^(1 - b) when count = n is a power of two (3e-5 at b = 16), so none of d coordinates is
    over with probability (1 - that)^d (0.05 at d = 10^5 there). Under distributed DP any field
    element is a possible sum (the noise wraps mod 2^m): None."""
    if spec.distributed_dp:
        return None
    most = count * 2 * quantize.levels(spec.bits)
    over = int(np.count_nonzero(np.asarray(total, dtype=np.int64) > most))
    if not over:
        return None
    return (f"{over} of {np.asarray(total).size} coordinates of the unmasked sum exceed {most}, the most {count} "
            f"devices' {spec.bits}-bit codes add up to: a wrong self seed, or inputs off the shared encoding")
