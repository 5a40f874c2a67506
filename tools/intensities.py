"""8-bit intensities saved as another dtype: pixels 0..255 written as float32 (`x.astype('float32')`
before saving, very common), float64 or a wider integer.

A device reads uint8 features as x / 255 (edge_runtime/kernel/features.py: as_features), so uint8
pixels are never far from standardized; the same pixels saved as float32 are read as saved and
flagged (per-feature means near 130). Standardizing them on each device with its own mean and
std moves each class differently on each device under label skew: MNIST-5k over 20 files,
Dirichlet 0.1, saved as float32 0..255 and standardized so, ended 5 rounds at 0.351 / 0.285 global
(seeds 0 / 1) where the same pixels in [0, 1] reached 0.561 / 0.442
(benchmarks/results/2026-12-06-unseen-data/pixels.json).
Auto (standardizing.resolve) reads them instead as a device reads uint8, x / 255, on every device
alike: no statistic, and the result is bit for bit the same data's as uint8.

A folder holds 8-bit intensities (eight_bit) when every split not saved as uint8 holds only
finite integer values in [0, 255], the largest of them above 127, and at least half of the
features that vary reach above 127 (SHARED_SCALE: one scale for all, as pixels have). The 127 keeps out sklearn's
digits (0..16) and small counts, which are not 8-bit images and train better standardized. The
values are checked as the devices read them, in float32 (a float64 100.00000001 is 100.0 there).
Splits saved as uint8 are x / 255 already and are left alone; bool splits are flags, not
intensities, and make a folder not 8-bit, as does a feature that takes only the values 0 and 1
over the folder's splits, 1 in at least FLAG_SHARE of its examples (a flag saved as int): an age
0..200 beside six 0/1 flags in int64 was read as x / 255, the flags as 0 or 1/255, and ended 5
rounds at 0.728 / 0.736 global (5 files, seeds 0 / 1) where standardized on each device it
reached 0.976 / 0.984. Pixels can take only 0 and 1 at a folder's edge, but rarely 1: in the
first 2, 5 and 20 files of MNIST-5k's Dirichlet 0.1 split (seeds 0, 1, 2) two pixels did, each
1 in one of 1,228 images. Auto asks only when the pooled training features are
flagged, or when some split is saved as uint8 (saves_uint8): a file with x_train as uint8 and
x_test as float32 0..255 leaves the pool on a unit scale, and its test split was scored as saved,
255 times the scale its device trained on, without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from fedge.edge_runtime.kernel.features import as_features

if TYPE_CHECKING:
    from fedge.tools.datasets import FederatedDataset

# The largest value must pass half of 255: a folder whose values stop at 16 (sklearn's digits) or
# at small counts is not 8-bit images, and those are standardized on each device.
HALF_OF_8_BIT = 127

# A feature of only 0s and 1s, 1 in at least this share of the examples, is a flag, not a pixel.
FLAG_SHARE = 0.01

# 8-bit intensities share one scale: at least this share of the features that vary reach above
# HALF_OF_8_BIT. In MNIST-5k 95% of them do (87-94% in samples of 10 to 1,228 images); integer
# tabular data with one column above 127 (an age 0..200 beside counts 0..5) has one such column
# in several, and x / 255 squeezed the rest towards 0.
SHARED_SCALE = 0.5

SPLITS = ("train", "test")


def eight_bit(data: FederatedDataset, saved: Mapping[str, Mapping[str, np.dtype]]) -> str | None:
    """The dtypes ("float32", or "float64 and int64") in which the folder saved 8-bit intensities,
    or None when it did not (see the module docstring). `saved`: each device's saved dtype of
    x_train and x_test, {client_id: {"train": dtype, "test": dtype}}. One split at a time."""
    dtypes, low, high, ones, n = set(), np.inf, -np.inf, 0, 0  # per-feature arrays from the first split read
    for c in data.clients:
        for split in SPLITS:
            x, dtype = getattr(c, f"x_{split}"), np.dtype(saved[c.client_id][split])
            if dtype == np.uint8 or not x.size:
                continue
            if dtype.kind == "b" or not _integers_0_255(x):
                return None
            dtypes.add(dtype.name)
            low, high = np.minimum(low, x.min(axis=0)), np.maximum(high, x.max(axis=0))
            ones, n = ones + (x == 1).sum(axis=0), n + len(x)
    if not dtypes or high.max() <= HALF_OF_8_BIT:
        return None
    flags = (low == 0) & (high == 1) & (ones >= FLAG_SHARE * n)
    varying = high > low  # none varies (every feature constant): the share clause holds vacuously
    if flags.any() or (varying.any() and (high[varying] > HALF_OF_8_BIT).mean() < SHARED_SCALE):
        return None
    return " and ".join(sorted(dtypes))


def saves_uint8(saved: Mapping[str, Mapping[str, np.dtype]]) -> bool:
    """Some device saved a split as uint8, the type devices read as pixels (x / 255)."""
    return any(np.dtype(dtype) == np.uint8 for splits in saved.values() for dtype in splits.values())


def _integers_0_255(x: np.ndarray) -> bool:
    """Every value finite, integer-valued and in [0, 255]."""
    return bool(np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255 and np.array_equal(x, np.round(x)))


def read_as_uint8(data: FederatedDataset, saved: Mapping[str, Mapping[str, np.dtype]]) -> FederatedDataset:
    """Each split not saved as uint8 read as a device reads uint8: as_features of its values as
    uint8, x / 255 in float32, bit for bit the same data saved as uint8. Only for data eight_bit
    found 8-bit (the cast to uint8 is exact there)."""
    clients = []
    for c in data.clients:
        read = {}
        for split in SPLITS:
            x = getattr(c, f"x_{split}")
            read[split] = x if np.dtype(saved[c.client_id][split]) == np.uint8 else as_features(x.astype(np.uint8))
        clients.append(replace(c, x_train=read["train"], x_test=read["test"]))
    return replace(data, clients=tuple(clients))
