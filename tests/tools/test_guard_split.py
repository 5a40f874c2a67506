"""The simulator's guard split (SimConfig.guard_fraction): a stratified share of a shipped
dataset that no device holds, disjoint from pretrain's proxy split, written as the
coordinator's guard_set."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.datasets import load_shipped
from fedge.tools.pretrain import proxy_positions
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import load_data, prepare
from fedge.tools.simulate.guard_split import guard_positions


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(x, np.float32)}


@pytest.mark.parametrize("proxy", [0.0, 0.1])
def test_no_device_holds_the_guard_split(proxy):
    cfg = sim_config(dataset="digits", devices=6, partition="dirichlet", seed=3, guard_fraction=0.05,
                     proxy_fraction=proxy)
    x, y = load_shipped("digits")
    guard = guard_positions(cfg, y)
    excluded = guard if not proxy else np.union1d(guard, proxy_positions(y, proxy, cfg.seed))
    if proxy:
        assert not np.intersect1d(guard, proxy_positions(y, proxy, cfg.seed)).size
    else:
        assert len(guard) == round(0.05 * len(y))
        assert np.bincount(y[guard], minlength=10).min() >= np.floor(0.05 * np.bincount(y).min())  # stratified
    data = load_data(cfg)
    held = np.concatenate([np.concatenate([c.x_train, c.x_test]) for c in data.clients])
    assert len(held) == len(y) - len(excluded)
    guard_rows, rest = _rows(x[guard]), _rows(np.delete(x, guard, axis=0))  # digits has duplicate images
    assert not (_rows(held) & (guard_rows - rest))


def test_the_coordinator_gets_the_guard_split_as_its_guard_set():
    cfg = sim_config(dataset="digits", devices=4, partition="iid", seed=1, guard_fraction=0.05)
    setup = prepare(cfg)
    try:
        saved = np.load(setup.ccfg.guard_set)
        x, y = load_shipped("digits")
        keep = guard_positions(cfg, y)
        np.testing.assert_array_equal(saved["x"], x[keep])
        np.testing.assert_array_equal(saved["y"], y[keep])
    finally:
        setup.close()
    plain = prepare(sim_config(dataset="digits", devices=4, partition="iid", seed=1))
    try:
        assert plain.ccfg.guard_set == ""  # without the option the coordinator holds no data
    finally:
        plain.close()


@pytest.mark.parametrize("bad", [dict(guard_fraction=0.6), dict(guard_fraction=-0.1),
                                 dict(guard_fraction=0.1, dataset="synthetic"),
                                 dict(guard_fraction=0.1, standardize=True),
                                 dict(guard_fraction=0.1, partition="feature")])
def test_bad_guard_fractions_are_refused(bad):
    with pytest.raises(ConfigError, match="guard_fraction"):
        sim_config(**{"devices": 4, **bad})
