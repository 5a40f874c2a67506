"""A tiny real model (12 features, 3 classes, one LoRA layer) shared by unit tests."""

from __future__ import annotations

from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec

FEATURES, CLASSES = 12, 3


def build_tiny_model(directory):
    """(artifact dir, manifest, ModelRuntime) for the tiny MLP, portable graphs only."""
    manifest = build_artifacts(mlp_spec(FEATURES, CLASSES, hidden=(8,), modes=("lora",), lora_rank=2), directory,
                               ort_training=False)
    return directory, manifest, ModelRuntime(directory, expected_model_id=manifest.model_id)
