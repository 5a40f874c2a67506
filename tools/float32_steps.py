"""A --data file whose features the cast to float32 erases: every reader (a device, the simulator)
takes x as float32 before anything else, and float32 keeps 24 bits, so a float64 or 64-bit int
feature that varies by little around a large offset (a timestamp, a reading of 10^8 + a few
units) loses its variation in the cast, before standardizing could rescue it. A probe
(2026-12-07, /tmp/data-zoo): blobs with std 3 around 10^8, saved as float64, ended 2 rounds at
0.767 global accuracy where the same blobs around 0 reached 1.0, with no word about why."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("fedge.datasets")

# A feature is flagged when float32's step at its largest |value| exceeds this share of its std:
# rounding then adds noise of about 0.29 step (a uniform error), some 1.5% of the feature's spread
# and more. Epoch seconds over a day (step 128 s, std ~25,000 s) stay unflagged.
STEP_SHARE = 0.05
# A split of fewer examples is not judged: its sample std is too rough a guess of the feature's
# (5 readings of epoch milliseconds over an hour flagged, where the 50 of their x_train did not).
MIN_EXAMPLES = 10


def cast_loss(file: Path, split: str, x: np.ndarray) -> str | None:
    """In words, the features of x (examples, ...) as saved whose variation the float32 cast
    erases, or None (always None for dtypes float32 holds exactly: float16/32, 8- and 16-bit ints)."""
    if len(x) < MIN_EXAMPLES or x.dtype.kind not in "fiu" or x.dtype.itemsize <= (4 if x.dtype.kind == "f" else 2):
        return None
    flat = x.reshape(len(x), -1)
    top = np.maximum(np.abs(flat.max(axis=0).astype(np.float64)), np.abs(flat.min(axis=0).astype(np.float64)))
    std = flat.std(axis=0, dtype=np.float64)
    step = np.spacing(top.astype(np.float32)).astype(np.float64)
    lost = np.flatnonzero((std > 0) & (step > STEP_SHARE * std))
    if not len(lost):
        return None
    j = int(lost[np.argmax(step[lost] / std[lost])])
    return (f"{file}: x_{split} is saved as {x.dtype}, and {len(lost)} of its {flat.shape[1]} features vary by "
            f"little beside their size (feature {j}: std {std[j]:.3g} at values up to {top[j]:.3g}); devices read "
            f"features as float32, whose step there is {step[j]:.3g}, so the cast erases much of that variation "
            f"before standardizing could keep it. Subtract an offset (e.g. each feature's mean over all files) "
            f"before saving")


def warn_cast_losses(root: Path, lines: list[str], shown: int = 5) -> None:
    """cast_loss's lines, the first `shown` and the rest counted in one line."""
    for line in lines[:shown]:
        log.warning("%s", line)
    if len(lines) > shown:
        log.warning("%s: %d more splits lose feature variation in the cast to float32", root, len(lines) - shown)
