"""A guard set of uint8 pixels is read as the devices read theirs, x / 255.

Devices read uint8 features as pixel intensities, x / 255 (edge_runtime/examples.py); the
coordinator's guard set (`[coordinator] guard_set`, an .npz of x, y) was cast to float32 as
saved, so a guard set kept in the same form as the devices' files scored every model on inputs
255 times what it trained on: its losses (the guard's ratio, screening's harms) described
another task."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.holdout import HoldoutCheck
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model


def test_a_uint8_guard_set_scores_the_model_on_x_over_255(tmp_path):
    pytest.importorskip("onnxruntime")
    from fedge.edge_runtime.trainer.portable import PortableBackend

    art, manifest, runtime = build_tiny_model(tmp_path / "art")
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, size=(40, FEATURES)).astype(np.uint8), rng.integers(0, CLASSES, 40)
    np.savez(tmp_path / "guard.npz", x=x, y=y)
    shared = {k: v + 0.3 * rng.normal(size=v.shape).astype(np.float32) for k, v in runtime.initial("shared").items()}

    # Oracle: the device's own predict on what a device would train on (x / 255), a plain loop.
    logits = PortableBackend(art, manifest, "sgd").predict({**shared, **runtime.initial("personal")},
                                                           x.astype(np.float32) / np.float32(255))["global"]
    want = float(np.mean([np.logaddexp.reduce(row) - row[label] for row, label in zip(logits.astype(float), y)]))
    got = HoldoutCheck(art, manifest, tmp_path / "guard.npz", max_ratio=1.5).loss(shared)
    assert got == pytest.approx(want, rel=1e-5)
