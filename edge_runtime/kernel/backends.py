"""Which trainer backends this install can run: asked without importing onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BACKENDS = ("portable", "ort-training", "numpy")


def available_backends() -> tuple[str, ...]:
    found = []
    spec = importlib.util.find_spec("onnxruntime")
    if spec is not None:
        found.append("portable")
        if spec.submodule_search_locations and (Path(spec.submodule_search_locations[0]) / "training" / "api").is_dir():
            found.append("ort-training")
    found.append("numpy")
    return tuple(found)
