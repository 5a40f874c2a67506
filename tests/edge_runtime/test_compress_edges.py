"""compress.py at its documented boundaries (2026-12-06 mutation audit of the update path:
benchmarks/results/2026-12-06-mutation4-update/): an update exactly at the clip bound, a
tensor whose top-k reaches its size, a residual given while error feedback is off."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import compress_update, decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.update_codec import encode_dense, encode_tensors


def test_an_update_exactly_at_the_clip_norm_is_sent_as_it_is_and_not_counted_clipped():
    """||(3, 4)|| = 5 exactly: what is sent is "scaled ... when it came out over" and
    stats.clipped is norm > clip_norm, so at 5 (fp32, dense) nothing is scaled: the values go
    bit for bit, without the (1 - 2**-20) margin, and the residual is zero."""
    delta = {"w": np.array([3.0, 4.0], np.float32)}
    spec = CompressionSpec(clip_norm=5.0, quant_bits=32, error_feedback=True)
    sent, residual, stats = compress_update(delta, None, spec, np.random.default_rng(0))
    assert stats.original_norm == 5.0 and not stats.clipped
    assert decompress_update(sent)["w"].tolist() == [3.0, 4.0]
    assert residual["w"].tolist() == [0.0, 0.0]
    over, _, over_stats = compress_update({"w": np.array([3.0, 4.0000005], np.float32)}, None, spec,
                                          np.random.default_rng(0))
    assert over_stats.clipped and decompress_update(over)["w"][0] < 3.0  # just over: scaled


@pytest.mark.parametrize("frac, size", [(0.5, 1), (0.6, 2), (0.8, 4), (0.3, 1)])
def test_a_tensor_whose_top_k_reaches_its_size_is_sent_dense(frac, size):
    """k = max(1, ceil(frac x size)) >= size: every entry is kept, so the tensor goes dense
    (no indices, the dense frame's bytes), not sparse with every index listed."""
    values = np.arange(1, size + 1, dtype=np.float32)
    spec = CompressionSpec(quant_bits=32, topk_fraction=frac, error_feedback=False)
    sent, _, stats = compress_update({"w": values}, None, spec, np.random.default_rng(0))
    assert sent[0].indices is None
    assert stats.kept_entries == size
    assert len(encode_tensors(sent)) == len(encode_dense({"w": values}))
    assert decompress_update(sent)["w"].tolist() == values.tolist()


@pytest.mark.parametrize("bits, frac", [(32, 0.5), (8, 1.0), (4, 0.3)])
def test_a_residual_is_ignored_when_error_feedback_is_off(bits, frac):
    """add_residual: "A residual is ignored when error feedback is off": what is sent with a
    stale residual in hand is what is sent with none, draw for draw."""
    rng = np.random.default_rng(7)
    delta = {"a": rng.standard_normal(10).astype(np.float32), "b": rng.standard_normal((3, 2)).astype(np.float32)}
    residual = {n: np.full(t.shape, 5.0, np.float32) for n, t in delta.items()}
    spec = CompressionSpec(quant_bits=bits, topk_fraction=frac, error_feedback=False)
    with_residual, none_back, _ = compress_update(delta, residual, spec, np.random.default_rng(1))
    without, _, _ = compress_update(delta, None, spec, np.random.default_rng(1))
    assert none_back is None
    assert encode_tensors(with_residual) == encode_tensors(without)
