import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import quantize as q
from fedge.edge_runtime.kernel.secagg.masking import sum_mod
from fedge.edge_runtime.kernel.secagg.packing import pack, packed_size, unpack
from fedge.edge_runtime.kernel.secagg.subset import shared_coordinates


@pytest.mark.parametrize("d", [1, 2, 7, 1000, 100_000])
def test_the_rotation_is_orthonormal_and_inverts(d):
    x = np.random.default_rng(d).normal(size=d)
    y = q.rotate(x, seed=9)
    assert y.shape == (d,)  # nothing padded
    assert np.isclose(np.linalg.norm(y), np.linalg.norm(x))
    assert np.allclose(q.unrotate(y, seed=9), x)
    assert np.allclose(q.rotate(x, 9) + q.rotate(2 * x, 9), q.rotate(3 * x, 9))  # linear: sums un-rotate


def test_the_rotation_flattens_a_peaky_vector():
    x = np.zeros(65536 + 4096)
    x[[3, 100]] = [100.0, -50.0]
    y = q.rotate(x, seed=1)
    assert np.abs(y).max() < 0.05 * np.abs(x).max()


def test_quantization_is_unbiased_and_bounded():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1.2, 1.2, size=2000)
    bits, c = 8, 1.0
    draws = np.stack([q.quantize(y, c, bits, rng) for _ in range(400)]).astype(np.int64) - q.levels(bits)
    assert draws.min() >= -127 and draws.max() <= 127
    mean = draws.mean(axis=0) * c / q.levels(bits)
    np.testing.assert_allclose(mean, np.clip(y, -c, c), atol=4 * (c / 127) / np.sqrt(400) * 0.6 + 1e-9)


@pytest.mark.parametrize("bits,n", [(8, 2), (8, 1000), (16, 1000), (16, 100)])
def test_n_maximal_codes_sum_without_wrapping(bits, n):
    m = q.field_bits(bits, n)
    assert m == bits + int(np.ceil(np.log2(n)))
    top = np.full(4, 2 * q.levels(bits), dtype=np.uint64)
    assert int(top.max()) * n < 2**m
    total = (top.astype(np.uint32) * n) & np.uint32(2**m - 1)
    assert np.array_equal(q.decode_sum(total, n, 1.0, bits), np.full(4, float(n)))


@pytest.mark.parametrize("bits,n", [(24, 256), (8, 1000), (16, 65536), (20, 4096)])
def test_the_masked_domain_sum_of_maximal_codes_is_the_plain_integer_sum(bits, n):
    """sum_mod, the sum the coordinator unmasks, against Python's integers, up to m = 32."""
    top = 2 * q.levels(bits)
    total = sum_mod([np.full(3, top, np.uint32)] * n, q.field_bits(bits, n), 3)
    assert [int(v) for v in total] == [top * n] * 3
    assert np.array_equal(q.decode_sum(total, n, 1.0, bits), np.full(3, float(n)))


def test_a_field_wider_than_the_mask_words_is_refused_not_wrapped():
    """b = 24 and 300 devices need m = 33: the uint32 sum wrapped (7.38e8 for 5.03e9) without a word."""
    assert q.field_bits(24, 300) == 33
    with pytest.raises(ValueError, match="33-bit field"):
        sum_mod([np.full(3, 2 * q.levels(24), np.uint32)] * 300, 33, 3)


def test_encode_then_decode_of_a_sum_recovers_the_float_sum():
    rng = np.random.default_rng(4)
    xs = [rng.normal(scale=0.01, size=5000) for _ in range(10)]
    codes = [q.encode(x, 3, 0.05, 16, rng) for x in xs]
    total = np.sum(np.stack(codes).astype(np.uint64), axis=0)
    got = q.decode(total, 10, 3, 0.05, 16)
    np.testing.assert_allclose(got, np.sum(xs, axis=0), atol=10 * 0.05 / q.levels(16) * 3)


@pytest.mark.parametrize("bits", [1, 5, 8, 13, 18, 26, 32])
def test_packing_round_trips_at_exactly_the_field_width(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2**bits, size=1001, dtype=np.uint64).astype(np.uint32)
    data = pack(v, bits)
    assert len(data) == packed_size(1001, bits) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack(data, 1001, bits), v)
    if bits < 32:
        with pytest.raises(ValueError):
            pack(np.array([2**bits], dtype=np.uint32), bits)
    with pytest.raises(ValueError):
        unpack(data + b"\0", 1001, bits)


def test_the_shared_subset_is_the_same_for_every_device_of_a_round():
    a = shared_coordinates(100_000, 0.1, seed=42)
    assert a.size == 10_000 and np.array_equal(a, shared_coordinates(100_000, 0.1, seed=42))
    assert np.all(np.diff(a) > 0)
    assert not np.array_equal(a, shared_coordinates(100_000, 0.1, seed=43))
    assert np.array_equal(shared_coordinates(5, 1.0, 1), np.arange(5))
