import numpy as np

from fedge.edge_runtime.kernel.secagg import quantize
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.shared_encoding import decode_mean, encode_update, subset_size
from fedge.edge_runtime.kernel.secagg.subset import shared_coordinates

SPEC = SecAggSpec(bits=8, field_bits=12, clip_range=0.05, rotation_seed=11, keep_fraction=0.25)


def test_what_is_sent_plus_what_is_kept_is_the_delta_plus_the_old_residual():
    rng = np.random.default_rng(0)
    delta, old = rng.normal(scale=0.01, size=4000), rng.normal(scale=0.002, size=4000)
    values, left = encode_update(delta, old, SPEC, rng)
    assert values.size == subset_size(4000, SPEC) == 1000
    sent = decode_mean(values, 1, 4000, SPEC)  # one device's contribution, back on all coordinates
    np.testing.assert_allclose(sent + left, delta + old, atol=1e-12)
    off = np.setdiff1d(np.arange(4000), shared_coordinates(4000, 0.25, 11))
    assert np.all(sent[off] == 0) and np.allclose(left[off], (delta + old)[off])


def test_the_mean_of_a_sum_is_the_mean_of_each_devices_contribution():
    rng = np.random.default_rng(1)
    encoded = [encode_update(rng.normal(scale=0.01, size=3000), None, SPEC, rng)[0] for _ in range(7)]
    total = np.sum(np.stack(encoded).astype(np.int64), axis=0)
    mean = decode_mean(total, 7, 3000, SPEC)
    each = np.mean([decode_mean(v, 1, 3000, SPEC) for v in encoded], axis=0)
    np.testing.assert_allclose(mean, each, atol=1e-12)
    assert quantize.field_bits(8, 7) == 11
