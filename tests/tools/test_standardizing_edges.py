"""The bounds of auto's scale check (tools/standardizing.scale_finding, pooled_scale) against
hand-computed values and numpy on the pooled features: FAR_FROM_UNIT and BARELY_VARIES are
inclusive of unit-like data (a largest |mean| or std of exactly 4 is not flagged, a std of
exactly 0.05 is not flagged), and just past either is. A mutation audit
(benchmarks/results/2026-12-06-mutation2) moved each bound and no test noticed."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.standardizing import BARELY_VARIES, FAR_FROM_UNIT, pooled_scale, scale_finding


def _devices(*xs, dtype=np.float32):
    """One device per x_train (examples, 2), test splits empty."""
    clients = tuple(ClientData(f"d{i}", np.asarray(x, dtype), np.zeros(len(x), np.int64), np.zeros((0, 2), dtype),
                               np.zeros(0, np.int64)) for i, x in enumerate(xs))
    return FederatedDataset("edges", clients, 2, (2,), None)


def _numpy(data):
    """The oracle: numpy on the concatenated pool, in float64."""
    x = np.concatenate([c.x_train for c in data.clients]).astype(np.float64)
    return np.abs(x.mean(axis=0)).max(), x.std(axis=0).max(), np.abs(x).max()


@pytest.mark.parametrize("a", [4.0, -4.0])
def test_a_mean_of_exactly_far_from_unit_is_not_flagged_and_just_past_it_is(a):
    assert FAR_FROM_UNIT == 4.0
    at = _devices([[a, -1.0]], [[a, 1.0], [a, 0.0]])  # two devices: the pooled mean is exactly a
    assert pooled_scale(at) == pytest.approx(_numpy(at), rel=1e-12) and pooled_scale(at)[0] == 4.0
    assert scale_finding(at) is None
    past = _devices([[a * 1.001, -1.0]], [[a * 1.001, 1.0], [a * 1.001, 0.0]])
    assert "|mean| up to 4" in scale_finding(past) and "diverge" in scale_finding(past)
    halfway = _devices([[4.5, -1.0], [4.5, 1.0]])  # past 4, short of the old 10 (digits halved: means to 7)
    assert "diverge" in scale_finding(halfway)


def test_a_std_of_exactly_barely_varies_is_not_flagged_and_just_under_it_is():
    """±0.05 in float64: mean 0 and a std of exactly 0.05 (the bound, as float64 has it)."""
    at = _devices([[0.0, -0.05], [0.0, 0.05]], dtype=np.float64)
    assert _numpy(at)[1] == BARELY_VARIES == pooled_scale(at)[1]
    assert scale_finding(at) is None
    under = _devices([[0.0, -0.0499], [0.0, 0.0499]], dtype=np.float64)
    assert "barely vary" in scale_finding(under)


def test_the_pooled_std_is_the_population_std_over_devices_with_different_means():
    """Two devices whose own spread is small beside the gap between them: feature 0 holds 0, 2 on
    one and 4, 6 on the other, a pooled std (numpy, ddof 0) of sqrt(5) of which sqrt(1) is each
    device's own; feature 1 is -1 on one and 1 on the other, each constant (own std 0), pooled 1."""
    data = _devices([[0.0, -1.0], [2.0, -1.0]], [[4.0, 1.0], [6.0, 1.0]])
    assert pooled_scale(data) == pytest.approx(_numpy(data), rel=1e-12)
    assert pooled_scale(data) == pytest.approx((3.0, np.sqrt(5.0), 6.0), rel=1e-12)
