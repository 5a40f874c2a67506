"""The values a DeviceRuntime takes and gives (device.py re-exports them): a device's local
data, and what one evaluation on its held-out split measured."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class DeviceEval:
    num_test: int
    accuracy_personal: float | None
    accuracy_global: float | None
    loss_personal: float | None = None  # mean cross-entropy (nats) on the held-out split
    loss_global: float | None = None
