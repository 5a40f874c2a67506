"""Import onnxruntime-training's torch-free parts without its package `__init__`.

`import onnxruntime.training` runs `onnxruntime/training/__init__.py`, which imports
`optim` and through it torch. The on-device API (`training.api`) and the artifact generator
(`training.artifacts`, `training.onnxblock`) need no torch, so we register the package in
sys.modules as a bare namespace pointing at its directory and import the submodules directly.

    api = load_ort_training("api")            # CheckpointState, Module, Optimizer
    artifacts = load_ort_training("artifacts")  # generate_artifacts, OptimType
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

from .errors import BackendUnavailable

_PACKAGE = "onnxruntime.training"
_INSTALL_HINT = (
    "the ort-training backend needs the onnxruntime training build: "
    "`pip install 'fedge[ort-training]'` (onnxruntime-training-cpu 1.19.2, x86_64, Python < 3.13), "
    "in an environment without the stock `onnxruntime` wheel; or use the `portable` backend"
)


def training_dir() -> Path:
    """The installed `onnxruntime/training` directory; BackendUnavailable if absent."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(f"onnxruntime is not installed: {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "training"
    if not (path / "api").is_dir():
        raise BackendUnavailable(f"this onnxruntime ({path.parent}) is not the training build: {_INSTALL_HINT}")
    return path


def _register_package() -> None:
    """Put a bare `onnxruntime.training` module in sys.modules (idempotent)."""
    if _PACKAGE in sys.modules:
        return  # either ours, or the real package that someone imported (with torch) already
    path = training_dir()
    import onnxruntime  # the parent must be imported first (it is torch-free)

    spec = importlib.machinery.ModuleSpec(_PACKAGE, loader=None, origin=str(path / "__init__.py"), is_package=True)
    spec.submodule_search_locations = [str(path)]
    module = types.ModuleType(_PACKAGE, "onnxruntime.training, registered without its __init__ (no torch)")
    module.__path__ = [str(path)]
    module.__package__ = _PACKAGE
    module.__spec__ = spec
    module.__file__ = str(path / "__init__.py")
    sys.modules[_PACKAGE] = module
    onnxruntime.training = module  # so `onnxruntime.training.api` resolves as an attribute too


def load_ort_training(submodule: str) -> types.ModuleType:
    """Import `onnxruntime.training.<submodule>` ("api", "artifacts", "onnxblock") without torch."""
    _register_package()
    try:
        return importlib.import_module(f"{_PACKAGE}.{submodule}")
    except ImportError as exc:
        raise BackendUnavailable(f"cannot import {_PACKAGE}.{submodule} ({exc}): {_INSTALL_HINT}") from exc
