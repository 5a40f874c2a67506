"""Trainer backends behind one interface (see base.TrainerBackend).

    portable      train-step graph in standard ONNX ops on stock onnxruntime (any arch)
    ort-training  onnxruntime-training's on-device training API on generated artifacts
    numpy         pure-numpy reference for the dense/LoRA/head part

`auto` picks portable when onnxruntime is importable, else numpy.
"""

from __future__ import annotations

from ..kernel.backends import BACKENDS, available_backends
from ..kernel.errors import BackendUnavailable
from ..kernel.manifest import Manifest
from .base import Params, StepHyper, TrainerBackend, fresh_optimizer_state


def make_backend(name: str, artifact_dir, manifest: Manifest, optimizer: str) -> TrainerBackend:
    if name == "auto":
        name = available_backends()[0]
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown trainer backend {name!r}; choose one of {BACKENDS} or 'auto'")
    if name not in available_backends():
        raise BackendUnavailable(
            f"backend {name!r} is not installed here (available: {available_backends()}); "
            "ort-training needs `pip install 'fedge[ort-training]'` on x86_64, portable needs `fedge[device]`"
        )
    if name == "portable":
        from .portable import PortableBackend

        return PortableBackend(artifact_dir, manifest, optimizer)
    if name == "ort-training":
        from .ort_training import OrtTrainingBackend

        return OrtTrainingBackend(artifact_dir, manifest, optimizer)
    from .numpy_ref import NumpyBackend

    return NumpyBackend(artifact_dir, manifest, optimizer)


__all__ = ["BACKENDS", "Params", "StepHyper", "TrainerBackend", "available_backends", "fresh_optimizer_state",
           "make_backend"]
