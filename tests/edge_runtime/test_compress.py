"""Oracle tests for edge_runtime.compress: statistics over many seeds, naive reference loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import (
    CompressedTensor,
    clip_by_global_norm,
    compress_update,
    decompress_update,
    dequantize,
    quantize_stochastic,
)
from fedge.edge_runtime.kernel.protocol import CompressionSpec

SHAPES = {"b": (13,), "a": (7, 5), "scalar": (), "empty": (0, 3), "c": (2, 3, 4)}


def _delta(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


def _naive_norm(tensors: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(v) ** 2 for t in tensors.values() for v in np.ravel(t)))


# --- quantization ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits, levels", [(8, 127), (4, 7)])
def test_quantize_unbiased_and_bounded_over_seeds(bits, levels):
    """Unbiased within what the sampling noise allows, derived from the exact variance.

    Each sample of element i is x_i + scale * (B - p_i), B ~ Bernoulli(p_i), p_i = frac(x_i / scale):
    mean 0, variance scale^2 p_i (1 - p_i). Over S samples the mean error e_i has variance
    v_i = scale^2 p_i (1 - p_i) / S, so (e_i / sqrt(v_i)) is about N(0, 1) per element, their sum
    over n elements about N(0, n), and their squares sum to about chi2(n). Each is held to its
    5-sigma bound. With S = 20,000 and n = 48 the pooled z would flag a bias of 0.25% of the scale
    on every element (the per-element 5 sigma / sqrt(S) bound alone let 5% through).
    """
    x = np.random.default_rng(123).uniform(-2.0, 3.0, size=48).astype(np.float32)
    seeds, copies = 2000, 10  # each draw quantizes 10 copies of x side by side: same scale, own coins
    tiled = np.tile(x, copies)
    total = np.zeros(x.shape, dtype=np.float64)
    scales = set()
    for seed in range(seeds):
        codes, scale = quantize_stochastic(tiled, bits, np.random.default_rng(seed))
        assert codes.dtype == np.int8 and codes.shape == tiled.shape
        assert np.all(np.abs(codes.astype(np.int16)) <= levels)
        deq = dequantize(codes, scale)
        assert deq.dtype == np.float32
        # Error bound, elementwise, every sample (float32 product rounding as slack).
        assert np.all(np.abs(deq.astype(np.float64) - tiled) <= scale * (1 + 1e-6))
        total += deq.astype(np.float64).reshape(copies, -1).sum(axis=0)
        scales.add(scale)
    (scale,) = scales  # the scale depends on x only, not on the seed
    assert scale == pytest.approx(float(np.max(np.abs(x))) / levels, rel=1e-6)
    samples = seeds * copies
    y = x.astype(np.float64) / scale
    p = y - np.floor(y)
    var = scale**2 * p * (1 - p) / samples  # variance of each element's mean
    err = total / samples - x
    live = var > 0  # an x on a code exactly: no noise, and no error either
    np.testing.assert_allclose(err[~live], 0, atol=1e-6 * scale)
    z = err[live] / np.sqrt(var[live])
    n = int(live.sum())
    assert np.max(np.abs(z)) < 5.5, f"worst element at {np.max(np.abs(z)):.1f} sigma"  # 48 draws of N(0, 1)
    assert abs(z.sum()) / math.sqrt(n) < 5, f"pooled bias at {z.sum() / math.sqrt(n):.1f} sigma"
    assert np.sum(z**2) < n + 5 * math.sqrt(2 * n), f"chi2 {np.sum(z**2):.0f} for {n} elements"


@pytest.mark.parametrize("bits, levels", [(8, 127), (4, 7)])
def test_quantize_scale_is_the_smallest_float32_that_keeps_the_peak_within_levels(bits, levels):
    """scale = max|x| / L rounded *up* to a float32: float32(max|x| / L) alone rounds down about
    half the time, and then the peak's code would need L + 1 (clipped to L: a biased code)."""
    rng = np.random.default_rng(7)
    rounded_down = 0
    for peak in rng.uniform(1e-3, 1e3, size=2000):
        codes, scale = quantize_stochastic(np.array([peak, -peak / 3]), bits, rng)
        s = np.float32(scale)
        assert float(s) * levels >= peak and float(np.nextafter(s, np.float32(0))) * levels < peak
        assert codes[0] == levels
        rounded_down += float(np.float32(peak / levels)) * levels < peak
    assert rounded_down > 100  # the case the rounding up is for came up


def test_quantize_codes_bracket_the_value():
    x = np.linspace(-1.0, 1.0, 21)
    codes, scale = quantize_stochastic(x, 4, np.random.default_rng(0))
    y = x / scale
    assert np.all((codes == np.floor(y)) | (codes == np.ceil(y)))


def test_quantize_zero_and_empty():
    for x in (np.zeros((3, 2), np.float32), np.zeros((0,), np.float32)):
        codes, scale = quantize_stochastic(x, 8, np.random.default_rng(0))
        assert scale == 0.0 and codes.shape == x.shape and not codes.any()
        assert not dequantize(codes, scale).any()


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError):
        quantize_stochastic(np.ones(3), 16, np.random.default_rng(0))
    with pytest.raises(ValueError):
        quantize_stochastic(np.array([1.0, np.nan]), 8, np.random.default_rng(0))


# --- clipping ---------------------------------------------------------------------------------

def test_clip_bounds_norm_and_keeps_direction():
    delta = _delta(np.random.default_rng(1), scale=3.0)
    norm = _naive_norm(delta)
    bound = norm / 4
    clipped, reported = clip_by_global_norm(delta, bound)
    assert reported == pytest.approx(norm, rel=1e-9)
    assert _naive_norm(clipped) <= bound * (1 + 1e-6)
    assert _naive_norm(clipped) == pytest.approx(bound, rel=1e-5)
    for name in delta:  # one common factor: the direction of the whole update is kept
        np.testing.assert_allclose(clipped[name], delta[name] * (bound / norm), rtol=1e-6, atol=1e-7)
        assert clipped[name].dtype == delta[name].dtype


def test_clip_noop_below_bound_or_disabled():
    delta = _delta(np.random.default_rng(2))
    norm = _naive_norm(delta)
    for bound in (norm * 1.01, 0.0, -1.0):
        clipped, reported = clip_by_global_norm(delta, bound)
        assert reported == pytest.approx(norm, rel=1e-9)
        for name in delta:
            np.testing.assert_array_equal(clipped[name], delta[name])


def test_clip_rejects_nan():
    with pytest.raises(ValueError, match="'x'"):
        clip_by_global_norm({"x": np.array([1.0, np.inf])}, 1.0)


# --- compress_update ---------------------------------------------------------------------------

def _naive_clip(delta: dict[str, np.ndarray], bound: float) -> dict[str, np.ndarray]:
    norm = _naive_norm(delta)
    factor = bound / norm if 0 < bound < norm else 1.0
    return {n: t.astype(np.float64) * factor for n, t in delta.items()}


@pytest.mark.parametrize("bits", [32, 8, 4])
@pytest.mark.parametrize("frac, clip", [(0.1, 0.0), (0.3, 2.0), (1.0, 0.0), (0.05, 1.0)])
def test_error_feedback_loses_nothing_over_rounds(bits, frac, clip):
    spec = CompressionSpec(clip_norm=clip, quant_bits=bits, topk_fraction=frac, error_feedback=True)
    data_rng, rng = np.random.default_rng(10), np.random.default_rng(11)
    want = {n: np.zeros(s) for n, s in SHAPES.items()}
    got = {n: np.zeros(s) for n, s in SHAPES.items()}
    residual = None
    for _ in range(30):
        delta = _delta(data_rng)
        carried = {n: np.zeros(s) if residual is None else residual[n].astype(np.float64) for n, s in SHAPES.items()}
        acc = {n: delta[n].astype(np.float64) + carried[n] for n in SHAPES}
        sent, residual, stats = compress_update(delta, residual, spec, rng)
        for n, t in _naive_clip(acc, clip).items():  # the residual is added before clipping;
            want[n] += t - carried[n]  # what this round adds beyond what was carried in (= delta if no clip binds)
        for n, t in decompress_update(sent).items():
            got[n] += t
        assert [t.name for t in sent] == sorted(SHAPES)
        k = {n: 0 if not math.prod(s) else max(1, math.ceil(frac * math.prod(s))) for n, s in SHAPES.items()}
        assert stats.kept_entries == sum(min(k[n], math.prod(s)) for n, s in SHAPES.items())
        assert stats.total_entries == sum(math.prod(s) for s in SHAPES.values())
    for n in SHAPES:
        assert residual[n].shape == SHAPES[n]
        np.testing.assert_allclose(got[n] + residual[n], want[n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits", [32, 8, 4])
@pytest.mark.parametrize("frac", [1.0, 0.3, 0.05])
def test_what_is_sent_never_exceeds_the_clip_bound_with_error_feedback(bits, frac):
    """Over many seeds and rounds of large deltas (so the clip binds and a residual builds up):
    ||sent|| <= clip_norm, and sent + new residual == clip(delta + old residual)."""
    clip = 1.5
    spec = CompressionSpec(clip_norm=clip, quant_bits=bits, topk_fraction=frac, error_feedback=True)
    worst, binding = 0.0, 0
    for seed in range(40):
        data_rng, rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
        residual = None
        for _ in range(6):
            delta = _delta(data_rng, scale=float(data_rng.choice([0.05, 1.0, 10.0])))
            acc = {n: delta[n].astype(np.float64) + (0 if residual is None else residual[n]) for n in SHAPES}
            sent, residual, stats = compress_update(delta, residual, spec, rng)
            decoded = decompress_update(sent)
            worst, binding = max(worst, _naive_norm(decoded)), binding + stats.clipped
            assert _naive_norm(decoded) <= clip
            for n, t in _naive_clip(acc, clip).items():
                np.testing.assert_allclose(decoded[n] + residual[n], t, rtol=1e-5, atol=1e-6)
    assert binding > 100  # the clip bound bit, so the test could have failed
    if frac == 1.0:
        assert worst > 0.99 * clip  # dense: what is sent reaches the bound


def test_the_old_order_would_have_sent_past_the_bound():
    """Oracle for the test above: clip(delta) + residual, the order before, exceeds the bound
    on the same inputs, so the bound is the new order's doing."""
    delta = {"w": np.full(4, 10.0, np.float32)}
    residual = {"w": np.full(4, 3.0, np.float32)}  # e.g. left by a sparse round before
    spec = CompressionSpec(clip_norm=1.0, quant_bits=32, error_feedback=True)
    old, _ = clip_by_global_norm(delta, 1.0)
    assert _naive_norm({"w": old["w"] + residual["w"]}) > 6
    sent, new_residual, stats = compress_update(delta, residual, spec, np.random.default_rng(0))
    assert _naive_norm(decompress_update(sent)) <= 1.0 and stats.clipped
    assert stats.original_norm == pytest.approx(26.0)  # of delta + residual
    np.testing.assert_allclose(new_residual["w"], 0.0, atol=1e-6)  # dense fp32: all of the clipped acc went


def test_without_error_feedback_mass_is_lost():
    spec = CompressionSpec(quant_bits=8, topk_fraction=0.1, error_feedback=False)
    data_rng, rng = np.random.default_rng(3), np.random.default_rng(4)
    want = {n: np.zeros(s) for n, s in SHAPES.items()}
    got = {n: np.zeros(s) for n, s in SHAPES.items()}
    for _ in range(10):
        delta = _delta(data_rng)
        sent, residual, _ = compress_update(delta, {n: np.ones(s) for n, s in SHAPES.items()}, spec, rng)
        assert residual is None
        for n in SHAPES:
            want[n] += delta[n]
            got[n] += decompress_update(sent)[n]
    assert not np.allclose(got["a"], want["a"], rtol=1e-2, atol=1e-2)


def test_topk_keeps_largest_magnitudes_exactly_in_fp32():
    delta = {"w": np.random.default_rng(5).permutation(np.arange(1, 101)).astype(np.float32).reshape(10, 10)}
    delta["w"][::2] *= -1
    spec = CompressionSpec(quant_bits=32, topk_fraction=0.07)
    (t,), residual, stats = compress_update(delta, None, spec, np.random.default_rng(0))
    flat = delta["w"].ravel()
    oracle = np.sort(np.argsort(-np.abs(flat), kind="stable")[:7])
    np.testing.assert_array_equal(t.indices, oracle)
    assert t.indices.dtype == np.uint32 and t.values.dtype == np.float32 and t.scale == 0.0
    np.testing.assert_array_equal(t.values, flat[oracle])
    assert stats.kept_entries == 7 and stats.total_entries == 100 and not stats.clipped
    dense = decompress_update([t])["w"].ravel()
    assert np.count_nonzero(dense) == 7
    np.testing.assert_array_equal(residual["w"].ravel() + dense, flat)  # first round: delta = sent + residual


def test_compress_is_deterministic_given_rng_seed():
    delta = _delta(np.random.default_rng(6))
    spec = CompressionSpec(clip_norm=1.0, quant_bits=4, topk_fraction=0.3)
    a, ra, sa = compress_update(delta, None, spec, np.random.default_rng(9))
    b, rb, sb = compress_update(dict(reversed(list(delta.items()))), None, spec, np.random.default_rng(9))
    assert sa == sb and sa.clipped
    for x, y in zip(a, b):
        assert (x.name, x.shape, x.bits, x.scale) == (y.name, y.shape, y.bits, y.scale)
        np.testing.assert_array_equal(x.values, y.values)
    for n in delta:
        np.testing.assert_array_equal(ra[n], rb[n])


def test_compress_rejects_bad_spec_and_mismatched_residual():
    delta = {"w": np.ones(4, np.float32)}
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        compress_update(delta, None, CompressionSpec(quant_bits=16), rng)
    with pytest.raises(ValueError):
        compress_update(delta, None, CompressionSpec(topk_fraction=0.0), rng)
    with pytest.raises(ValueError):
        compress_update(delta, {"v": np.ones(4)}, CompressionSpec(), rng)
    with pytest.raises(ValueError):
        compress_update(delta, {"w": np.ones(5)}, CompressionSpec(), rng)


def test_compressed_tensor_validates_itself():
    ok = dict(name="w", shape=(4,), bits=8, scale=0.5, indices=np.array([0, 2], np.uint32),
              values=np.array([1, -127], np.int8))
    CompressedTensor(**ok)
    for bad in (dict(bits=16), dict(indices=np.array([2, 0], np.uint32)),
                dict(indices=np.array([0, 4], np.uint32)), dict(values=np.array([1, -128], np.int8)),
                dict(bits=4), dict(scale=float("nan")),
                dict(values=np.array([1.0, 2.0], np.float32)), dict(bits=32, scale=0.0)):
        with pytest.raises(ValueError):
            CompressedTensor(**{**ok, **bad})
