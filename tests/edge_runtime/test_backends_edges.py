"""Which trainer backends an install offers (mutation7-kernel), against folders built by hand:
onnxruntime without its training/api package is "portable" only, never "ort-training" (which
would then fail at the first task instead of at the device's start); none at all is numpy only."""

from __future__ import annotations

import importlib.machinery
import importlib.util

from fedge.edge_runtime.kernel.backends import available_backends


def _onnxruntime_at(monkeypatch, folder) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kw):
        if name != "onnxruntime":
            return real(name, *args, **kw)
        if folder is None:
            return None
        spec = importlib.machinery.ModuleSpec("onnxruntime", None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_ort_training_needs_the_training_api_package(tmp_path, monkeypatch):
    _onnxruntime_at(monkeypatch, tmp_path)
    assert available_backends() == ("portable", "numpy")
    (tmp_path / "training").mkdir()
    assert available_backends() == ("portable", "numpy")  # training/ without api/: not the training build
    (tmp_path / "training" / "api").mkdir()
    assert available_backends() == ("portable", "ort-training", "numpy")


def test_without_onnxruntime_only_numpy(monkeypatch):
    _onnxruntime_at(monkeypatch, None)
    assert available_backends() == ("numpy",)
