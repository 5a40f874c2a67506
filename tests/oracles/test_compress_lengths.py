"""Compression on tensor lengths the module tests do not use (1, 2, 7, 2^16 + 3) and on ties,
against plain references: the error-feedback identity sent + new residual == delta + old
residual (clip off) to float32 precision over rounds, stochastic rounding's mean within a
Hoeffding bound (an exact tail bound: each rounding error lies in an interval of width
`scale`), and top-k as "k entries, none smaller in magnitude than any left out"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import compress_update, decompress_update, dequantize, quantize_stochastic
from fedge.edge_runtime.kernel.protocol import CompressionSpec

LENGTHS = [1, 2, 7, 2**16 + 3]
F32_EPS = float(np.finfo(np.float32).eps)


def _hoeffding(width: float, samples: int, p: float = 1e-9) -> float:
    """|mean of `samples` independent zero-mean errors, each in an interval of `width`| exceeds
    this with probability at most p."""
    return width * math.sqrt(math.log(2 / p) / (2 * samples))


def _k(frac: float, size: int) -> int:
    return max(1, math.ceil(frac * size))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("bits,frac", [(32, 0.3), (8, 1.0), (8, 0.5), (4, 0.2), (4, 1.0)])
def test_sent_plus_residual_is_delta_plus_old_residual(length, bits, frac):
    spec = CompressionSpec(quant_bits=bits, topk_fraction=frac, error_feedback=True)
    data, coins = np.random.default_rng([length, bits, 0]), np.random.default_rng([length, bits, 1])
    residual = None
    for _ in range(4):
        delta = {"t": (data.standard_normal(length) * 10.0 ** data.uniform(-3, 1)).astype(np.float32)}
        acc = delta["t"].astype(np.float64) + (0.0 if residual is None else residual["t"].astype(np.float64))
        sent, residual, stats = compress_update(delta, residual, spec, coins)
        decoded = decompress_update(sent)["t"]
        assert decoded.dtype == np.float32 and residual["t"].dtype == np.float32 and decoded.shape == (length,)
        scale = float(np.max(np.abs(acc)))
        np.testing.assert_allclose(decoded.astype(np.float64) + residual["t"], acc, rtol=0, atol=4 * F32_EPS * scale)
        assert stats.kept_entries == _k(frac, length) if frac < 1 else length
        assert stats.total_entries == length


@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("bits,levels", [(8, 127), (4, 7)])
def test_stochastic_rounding_is_unbiased_per_element_on_short_vectors(length, bits, levels):
    x = np.random.default_rng(length).uniform(-0.7, 0.7, size=length)
    x[0] = 0.7  # the peak sets the scale and lands on a code: the others are what is random
    samples = 4000
    means = np.zeros(length)
    for seed in range(samples):
        codes, scale = quantize_stochastic(x, bits, np.random.default_rng([seed, length]))
        means += dequantize(codes, scale).astype(np.float64)
    means /= samples
    assert scale == pytest.approx(0.7 / levels, rel=1e-6)
    # width `scale` per error, plus float32 rounding of each dequantized value
    assert np.all(np.abs(means - x) <= _hoeffding(scale, samples) + 2 * F32_EPS), np.abs(means - x) / scale


@pytest.mark.parametrize("bits", [8, 4])
def test_stochastic_rounding_of_a_long_odd_vector_is_unbiased_in_sum_and_bounded_each(bits):
    n = 2**16 + 3
    x = np.random.default_rng(bits).standard_normal(n)
    codes, scale = quantize_stochastic(x, bits, np.random.default_rng(99))
    err = dequantize(codes, scale).astype(np.float64) - x
    assert np.all(np.abs(err) <= scale * (1 + 1e-6))
    assert abs(err.mean()) <= _hoeffding(scale, n) + 2 * F32_EPS * np.max(np.abs(x))
    # each entry rounds to one of its two neighbouring codes
    y = x / scale
    assert np.all((codes == np.floor(y)) | (codes == np.ceil(y)))


@pytest.mark.parametrize("length", [2, 7, 2**16 + 3])
@pytest.mark.parametrize("frac", [0.5, 0.3, 0.01])
def test_top_k_with_ties_keeps_k_entries_none_smaller_than_any_left_out(length, frac):
    rng = np.random.default_rng([length, 7])
    flat = (rng.integers(1, 4, size=length) * rng.choice([-1.0, 1.0], size=length)).astype(np.float32)  # |x| in {1,2,3}
    spec = CompressionSpec(quant_bits=32, topk_fraction=frac, error_feedback=True)
    (t,), residual, _ = compress_update({"w": flat}, None, spec, rng)
    k = _k(frac, length)
    if k >= length:
        assert t.indices is None
        return
    assert t.indices.size == k and np.all(np.diff(t.indices.astype(np.int64)) > 0)
    left = np.setdiff1d(np.arange(length), t.indices)
    assert np.min(np.abs(flat[t.indices])) >= np.max(np.abs(flat[left]))
    np.testing.assert_array_equal(t.values, flat[t.indices])
    np.testing.assert_array_equal(decompress_update([t])["w"] + residual["w"], flat)


def test_top_k_of_all_equal_magnitudes_sends_exactly_k():
    flat = np.array([1, -1, 1, -1, 1, -1, 1], np.float32)
    for frac, k in [(0.1, 1), (0.3, 3), (0.5, 4), (0.99, 7)]:
        sent, residual, stats = compress_update({"w": flat}, None, CompressionSpec(quant_bits=8, topk_fraction=frac),
                                                np.random.default_rng(0))
        assert stats.kept_entries == k
        decoded = decompress_update(sent)["w"]
        assert np.count_nonzero(decoded) == k
        np.testing.assert_allclose(decoded + residual["w"], flat, atol=4 * F32_EPS)
