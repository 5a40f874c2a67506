"""Features as every reader of examples takes them: float32, with uint8 read as pixel
intensities, x / 255. One rule for a device's own data (edge_runtime/examples.py, its training
and its evaluation), the simulator's (tools/datasets.py) and the coordinator's guard set
(coordinator/holdout.py): a model trained on x / 255 and scored on raw 0..255 pixels is scored
on another task. Other integer types keep their values (`fedge simulate --data` flags a scale far
from 1 and by default standardizes it, or reads 8-bit intensities as x / 255: tools/standardizing.py).

Per-device standardization, one formula for a real device (`[data] standardize = true`,
device_config.load_local_data) and the simulator (tools/standardizing.standardize_per_device),
taken after as_features:

    mean, std = x_train's per-feature mean and std, in float64     (feature_statistics)
    std       = 1 where std <= 4.8e-7 * max(|mean|, 1)              (a constant feature: centred only)
    x'        = float32((x - mean) / std), for x_train and x_test   (standardize)

A value that lands beyond float32 (a test value 1e35 on a feature of std 1e-5) is a DatasetError
naming it: as inf it would have turned the device's evaluation into NaN logits, unnamed.

`fedge device export` puts the same affine, as float32, in front of the exported model.

Fleet statistics (`[data] statistics = FILE`): the same formula with the mean and std pooled over
many devices' training splits. Each device gives only its Moments (count, per-feature mean and
sum of squared deviations m2, `fedge device moments`), and combine_moments pools them with Chan
et al.'s merge: m2 over the union = sum m2_i + sum n_i (mean_i - mean)^2, which stays exact
where E[x^2] - mean^2 cancels to noise (a feature of 1e3 +- 1e-3 has mean^2 = 1e6 and a
variance of 1e-6: twelve of float64's sixteen digits cancel)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from .errors import DatasetError
from .wire_fields import MAX_EXAMPLES

# A feature whose std is at most this fraction of its scale, max(|mean|, 1), is constant on the
# device: dividing by it would blow float rounding up into signal, so it is only centred. Four
# float32 ulps (4 * 2**-23, 4.8e-7), since the statistics are taken on float32 features: values
# that differ only by rounding (0.1 + 0.2 beside 0.3) spread over a few ulps. It was 1e-6, about
# 8 ulps, which took real signal for rounding: a feature of mean 1e9 and std 900 (timestamps
# within a quarter hour) was centred only and reached the model as +-900.
CONSTANT_FEATURE = 4 * float(np.finfo(np.float32).eps)


def as_features(x: np.ndarray) -> np.ndarray:
    """x (examples, ...) as float32, its shape kept; uint8 divided by 255."""
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)


def example_layout(x: np.ndarray) -> tuple[int, ...]:
    """The shape of one example without its size-1 axes: (1, 28, 28), (28, 28, 1) and (28, 28)
    hold their values in the same order, so they are one layout."""
    return shape_layout(x.shape[1:])


def shape_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One example's shape without its size-1 axes (example_layout, given the example's shape)."""
    return tuple(n for n in shape if n != 1)


def laid_out_otherwise(x: np.ndarray, input_shape: tuple[int, ...]) -> bool:
    """True when examples of two or more axes (size-1 axes aside) are not laid out as the model's
    input of two or more: the same values in another order (channels-last for a channels-first
    model). Flat examples fit any layout: which one they were flattened from is not known. One
    rule for a device's data (ModelRuntime.check_input) and the coordinator's guard set."""
    have, takes = example_layout(x), tuple(n for n in input_shape if n != 1)
    return len(have) >= 2 and len(takes) >= 2 and have != takes


def feature_statistics(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each float64 of x_train's per-example shape: the per-feature mean and the
    std used to divide (1 for a feature constant on these examples; 0 and 1 when there are none)."""
    x = x_train.astype(np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1:])
    std = x.std(axis=0) if len(x) else np.ones(x.shape[1:])
    return mean, _divisor(mean, std)


def _divisor(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """std, with 1 for a feature constant at its scale (CONSTANT_FEATURE): only centred."""
    return np.where(std > CONSTANT_FEATURE * np.maximum(np.abs(mean), 1.0), std, 1.0)


class Moments(NamedTuple):
    """What one device's training split adds to fleet statistics: its example count, and per
    feature (float64, the per-example shape) the mean, m2 (the sum of squared deviations from
    the mean), and mean_residual, the mean of x - mean: what rounding the mean to float64 left
    out. Moments merge exactly (combine_moments); sums of x and x^2 do not. The residual is why
    the merge meets 1e-12: a feature of 1e3 +- 1e-3 has means that differ between devices by
    ~1e-4, and the rounding of each (1e-13) put the pooled std up to 6e-12 off without it."""
    count: int
    mean: np.ndarray
    m2: np.ndarray
    mean_residual: np.ndarray


def feature_moments(x_train: np.ndarray) -> Moments:
    """The Moments of x_train (examples, ...), as feature_statistics takes it (after as_features)."""
    x = x_train.astype(np.float64)
    if not len(x):
        return Moments(0, np.zeros(x.shape[1:]), np.zeros(x.shape[1:]), np.zeros(x.shape[1:]))
    mean = x.mean(axis=0)
    residual = (x - mean).mean(axis=0)
    # m2 about the exact mean (mean + residual). The clamp at 0 is a safeguard (combine_moments
    # refuses an m2 below 0): no input is known to reach below, 32,000 near-constant features of
    # values 1e-3 .. 1e10 and sizes 2-499 gave none; no test can show it, so none claims to
    m2 = np.maximum(((x - mean) ** 2).sum(axis=0) - len(x) * residual**2, 0.0)
    return Moments(len(x), mean, m2, residual)


def combine_moments(moments: Iterable[Moments], names: Sequence[str] | None = None,
                    max_count: int = MAX_EXAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the union of the splits that gave `moments`, as feature_statistics of their
    concatenation gives it (population std, the same constant-feature rule), of the first part's
    shape. DatasetError, naming the entry (names[i], else its position), for none given, a count
    that is not a whole number in [1, max_count] (by default MAX_EXAMPLES, the protocol's bound on
    one device's dataset), features of another layout (shape_layout: (4, 4) pools with (1, 4, 4)),
    or a value that is not finite (or an m2 below 0); and for a pooled mean or std that is not
    finite (means and m2 of 1e300 gave std = inf, a file no device could apply).

    Chan et al.'s merge, for all parts at once: m2 = sum m2_i + sum n_i (mean_i - mean)^2, never
    E[x^2] - mean^2, which put the std of 1e3 +- 1e-3 1.6e-4 off (test_fleet_moments). Each mean_i is
    taken as its offset from the first part's mean (exact for means within a factor of 2) plus
    its residual, so the offsets, ~std / sqrt(n), carry no rounding of the means' size."""
    parts = list(moments)
    if not parts:
        raise DatasetError("no moments to combine: give at least one device's (`fedge device moments`)")
    label = (lambda i: names[i]) if names is not None else (lambda i: f"moments {i + 1} of {len(parts)}")
    checked = [_checked(part, label(i), max_count) for i, part in enumerate(parts)]
    shape = checked[0][0].shape
    for i, (mean, _, _) in enumerate(checked):
        if shape_layout(mean.shape) != shape_layout(shape):
            raise DatasetError(f"{label(i)}: features of shape {mean.shape}, where {label(0)} has {shape}; "
                               "moments of one fleet describe examples of one shape (size-1 axes aside)")
    checked = [tuple(a.reshape(shape) for a in part) for part in checked]  # the same values in the same order
    counts = [int(part.count) for part in parts]
    total = sum(counts)
    if total > MAX_EXAMPLES_POOLED:
        raise DatasetError(f"counts that sum to {total}, above {MAX_EXAMPLES_POOLED} (a 64-bit count): no fleet's")
    reference = checked[0][0]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named below, as a value not finite
        offsets = [(mean - reference) + residual for mean, _, residual in checked]
        pooled = sum(n * d for n, d in zip(counts, offsets)) / total
        m2 = sum(m for _, m, _ in checked) + sum(n * (d - pooled) ** 2 for n, d in zip(counts, offsets))
        mean = reference + pooled
        std = np.sqrt(m2 / total)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        j = int(np.argmin(np.isfinite(mean) & np.isfinite(std)))
        raise DatasetError(f"pooled feature {j}: mean {mean.reshape(-1)[j]:g}, std {std.reshape(-1)[j]:g}, not finite "
                           "in float64: the moments' values are beyond any feature's (a damaged or hostile file)")
    return mean, _divisor(mean, std)


# The most examples a pooled count may reach: it is written as an int64 (2**63 - 1).
MAX_EXAMPLES_POOLED = 2**63 - 1


def _checked(part: Moments, name: str, max_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = part.count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise DatasetError(f"{name}: count {count!r} is not a positive whole number of examples")
    if count > max_count:
        raise DatasetError(f"{name}: count {count} is above {max_count}, the most examples one device's moments may "
                           "claim; a larger claim would outweigh the rest of the fleet")
    arrays = [np.asarray(a, np.float64) for a in (part.mean, part.m2, part.mean_residual)]
    if len({a.shape for a in arrays}) > 1:
        raise DatasetError(f"{name}: mean, m2 and mean_residual of shapes {[a.shape for a in arrays]}; they "
                           "describe one example's features alike")
    if not all(np.isfinite(a).all() for a in arrays) or (arrays[1] < 0).any():
        raise DatasetError(f"{name}: a mean, m2 or mean_residual that is not finite, or an m2 below 0 (a sum of "
                           "squares)")
    return arrays[0], arrays[1], arrays[2]


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, what: str = "x") -> np.ndarray:
    """(x - mean) / std in float64, returned as float32; x (examples, ...) as feature_statistics' input.
    DatasetError, naming `what` (the file and split), where a value does not fit float32."""
    z = (x - mean) / std
    too_large = np.abs(z) > np.finfo(np.float32).max
    if too_large.any():
        i, j = np.argwhere(too_large.reshape(len(z), -1))[0]
        raise DatasetError(f"{what}: example {i}, feature {j}: {x.reshape(len(x), -1)[i, j]:g} standardized with "
                           f"the training mean {mean.reshape(-1)[j]:g} and std {std.reshape(-1)[j]:g} is "
                           f"{z.reshape(len(z), -1)[i, j]:.3g}, beyond float32, where the device trains and evaluates")
    return z.astype(np.float32)
