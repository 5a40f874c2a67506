"""`fedge simulate --data` on features that barely vary: blobs scaled to a std of 1e-4 (a probe
on data fedge was not tuned on, 2026-12-06) trained to the constant guess in every round with no
load warning, where the same blobs at unit scale trained to 0.94; the only word came after the
last round, and it suggested lowering --lr, which makes it worse."""

from __future__ import annotations

import numpy as np

from fedge.tools.datasets import build_federated, data_findings, load_npz_dir
from fedge.tools.standardizing import BARELY_VARIES
from tests.tools.test_run_outcome import _blobs


def _scale_findings(data):
    return [f for f in data_findings(data) if "far from standardized" in f]


def test_features_that_barely_vary_are_named_on_load(tmp_path, caplog):
    tiny = load_npz_dir(_blobs(tmp_path / "tiny", scale=1e-4))
    (finding,) = _scale_findings(tiny)
    assert "barely vary" in finding and "(x - mean) / std" in finding and "diverge" not in finding
    assert "barely vary" in caplog.text  # logged as the folder loads, before any device trains
    x = np.concatenate([c.x_train for c in tiny.clients]).astype(np.float64)
    assert x.std(axis=0).max() < BARELY_VARIES  # oracle: numpy's own std of what the devices hold
    # per-device standardization is the remedy the finding names, and it clears the finding
    assert not _scale_findings(load_npz_dir(_blobs(tmp_path / "fixed", scale=1e-4), standardize=True))


def test_unit_scale_and_pixels_in_0_1_are_not_flagged(tmp_path):
    assert not _scale_findings(load_npz_dir(_blobs(tmp_path / "unit")))
    # digits scaled to [0, 1], as shipped: many pixels are constant, the others vary
    assert not _scale_findings(build_federated("digits", 4, "iid", seed=0))
    assert "diverge" in _scale_findings(load_npz_dir(_blobs(tmp_path / "big", scale=4000.0)))[0]


def test_the_scale_check_does_not_build_the_pool_and_measures_it_as_numpy_does():
    """scale_finding concatenated every device's training features in float64 to take a mean and
    a std: its peak was twice the pool's size in float64, three times a run (1.33 GB of RSS to
    load 251 MB of float32 over 40 files). It now goes one device at a time (pooled_scale).
    Oracles: tracemalloc's peak, under half the pool in float64 (the concatenation alone is all
    of it); and numpy on the concatenation, over devices of unequal sizes, offsets and scales."""
    import tracemalloc
    from dataclasses import replace

    from fedge.tools.standardizing import scale_finding

    rng = np.random.default_rng(3)
    base = build_federated("digits", 8, "iid", 0)
    clients = tuple(replace(c, x_train=(rng.normal(size=(int(n), 64)) * s + o).astype(np.float32))
                    for c, n, s, o in zip(base.clients, rng.integers(100, 300, 8), rng.uniform(0.01, 900, 8),
                                          rng.uniform(-500, 500, 8)))
    data = replace(base, clients=clients)
    pool = sum(c.x_train.size for c in clients) * 8  # bytes, float64
    tracemalloc.start()
    try:
        finding = scale_finding(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < pool / 2, (peak, pool)
    from fedge.tools.standardizing import pooled_scale

    x = np.concatenate([c.x_train for c in clients]).astype(np.float64)
    want = (np.abs(x.mean(axis=0)).max(), x.std(axis=0).max(), np.abs(x).max())
    np.testing.assert_allclose(pooled_scale(data), want, rtol=1e-9)
    assert f"per-feature |mean| up to {want[0]:.3g}, std up to {want[1]:.3g}, largest |value| {want[2]:.3g}" in finding
