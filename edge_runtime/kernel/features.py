"""Features as every reader of examples takes them: float32, with uint8 read as pixel
intensities, x / 255. One rule for a device's own data (edge_runtime/examples.py, its training
and its evaluation), the simulator's (tools/datasets.py) and the coordinator's guard set
(coordinator/holdout.py): a model trained on x / 255 and scored on raw 0..255 pixels is scored
on another task. Other integer types keep their values (a scale far from 1 is warned about)."""

from __future__ import annotations

import numpy as np


def as_features(x: np.ndarray) -> np.ndarray:
    """x (examples, ...) as float32, its shape kept; uint8 divided by 255."""
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x.astype(np.float32)
