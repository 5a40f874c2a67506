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

`fedge device export` puts the same affine, as float32, in front of the exported model."""

from __future__ import annotations

import numpy as np

from .errors import DatasetError

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
    return tuple(n for n in x.shape[1:] if n != 1)


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
    return mean, np.where(std > CONSTANT_FEATURE * np.maximum(np.abs(mean), 1.0), std, 1.0)


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
