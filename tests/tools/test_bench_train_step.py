"""tools.bench.train_step: the JSON schema, process isolation, and that every backend does the same math."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from fedge.tools.bench.train_step import add_torch_ratios, run

REQUIRED = {"model", "backend", "ms_per_step", "peak_rss_mb", "p90_ms", "batch_size", "steps", "threads", "python"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train_step.json"
    returned = run(out, models=("mlp-784-lora",), backends=("portable", "numpy", "torch"), batch_size=8, steps=5,
                   warmup=1)
    written = json.loads(out.read_text())
    assert written == returned
    return {r["backend"]: r for r in written}


def test_schema(results):
    assert set(results) == {"portable", "numpy", "torch"}
    for r in results.values():
        assert REQUIRED <= set(r), f"{r['backend']} misses {REQUIRED - set(r)}"
        assert (r["model"], r["batch_size"], r["steps"], r["threads"]) == ("mlp-784-lora", 8, 5, 1)
    for name in ("portable", "numpy"):
        assert "skipped" not in results[name] and "error" not in results[name], results[name]
        assert results[name]["ms_per_step"] > 0 and results[name]["p90_ms"] >= results[name]["ms_per_step"]
        assert results[name]["peak_rss_mb"] > 0
    assert "onnxruntime_version" in results["portable"]
    torch = results["torch"]
    if torch["ms_per_step"] is None:
        assert torch["skipped"], "an unmeasured torch entry must say why"
    else:
        assert torch["peak_rss_mb"] > 0 and "torch_version" in torch
        assert results["portable"]["vs_torch_time"] > 0 and results["portable"]["vs_torch_rss"] > 0


def test_each_backend_loads_only_what_it_needs(results):
    assert "onnxruntime" not in results["numpy"]["loaded"] and "torch" not in results["numpy"]["loaded"]
    assert "torch" not in results["portable"]["loaded"]
    if results["torch"]["ms_per_step"] is not None:
        assert "onnxruntime" not in results["torch"]["loaded"] and "onnx" not in results["torch"]["loaded"]


def test_backends_compute_the_same_steps(results):
    """Same seed, batches and SGD hyperparameters: the loss after 6 steps agrees (oracle check)."""
    measured = [r for r in results.values() if r["ms_per_step"] is not None]
    ref = results["numpy"]["last_loss"]
    assert math.isfinite(ref)
    for r in measured:
        assert r["last_loss"] == pytest.approx(ref, rel=1e-4), r["backend"]


def test_ratios_only_against_a_measured_torch():
    rows = [
        {"model": "m", "backend": "torch", "ms_per_step": 2.0, "peak_rss_mb": 200.0},
        {"model": "m", "backend": "portable", "ms_per_step": 1.0, "peak_rss_mb": 50.0},
        {"model": "n", "backend": "torch", "ms_per_step": None, "peak_rss_mb": None, "skipped": "no torch"},
        {"model": "n", "backend": "portable", "ms_per_step": 1.0, "peak_rss_mb": 50.0},
    ]
    add_torch_ratios(rows)
    assert (rows[1]["vs_torch_time"], rows[1]["vs_torch_rss"]) == (0.5, 0.25)
    assert "vs_torch_time" not in rows[0] and "vs_torch_time" not in rows[3]


def test_a_spec_path_with_folders_is_a_model(tmp_path):
    """`--models ./specs/my.toml` once went into mkdtemp's prefix, whose "/" named folders that do not exist."""
    from fedge.models import spec as spec_module

    spec_dir = tmp_path / "my specs"
    spec_dir.mkdir()
    spec = spec_dir / "my.toml"
    spec.write_text((Path(spec_module.__file__).parent / "specs" / "mlp-784-lora.toml").read_text())
    [row] = run(tmp_path / "ts.json", models=(str(spec),), backends=("numpy",), batch_size=4, steps=2, warmup=0)
    assert row["model"] == str(spec)
    assert "error" not in row and row["ms_per_step"] > 0, row
