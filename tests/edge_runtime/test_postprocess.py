"""The device's post-processing chain (edge_runtime/postprocess.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import compress_update, decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_tensors
from fedge.edge_runtime.postprocess import (
    CONTROL_STEPS,
    UPDATE_STEPS,
    Delta,
    TaskContext,
    clip,
    compress,
    encode,
    postprocess,
)


def _delta(rng, scale=1.0):
    return {"a": (scale * rng.normal(size=(4, 3))).astype(np.float32),
            "b": (scale * rng.normal(size=7)).astype(np.float32)}


def test_steps_run_in_list_order_with_the_same_context_and_rng():
    seen = []

    def tag(name):
        def step(delta, ctx, rng):
            seen.append((name, ctx.round_id, rng))
            return dataclasses.replace(delta, tensors={k: v * 2 + (name == "plus") for k, v in delta.tensors.items()})
        return step

    rng = np.random.default_rng(0)
    ctx = TaskContext(CompressionSpec(), round_id=4)
    out = postprocess([tag("double"), tag("plus")])(Delta({"x": np.array([1.0])}), ctx, rng)
    assert out.tensors["x"].tolist() == [(1.0 * 2) * 2 + 1]  # double, then plus: not the other way round
    assert seen == [("double", 4, rng), ("plus", 4, rng)]
    assert postprocess([])(Delta({"x": np.array([3.0])}), ctx, rng).tensors["x"].tolist() == [3.0]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("spec", [CompressionSpec(quant_bits=8, topk_fraction=0.3, clip_norm=1.0),
                                  CompressionSpec(quant_bits=4, clip_norm=0.0),
                                  CompressionSpec(quant_bits=32, topk_fraction=0.5, clip_norm=2.0,
                                                  error_feedback=False)])
def test_the_update_chain_sends_what_compress_update_sends(seed, spec):
    """Oracle: compress_update, the same steps in one call, on the same inputs and RNG state."""
    rng = np.random.default_rng(seed)
    delta, residual = _delta(rng, 3.0), _delta(rng, 0.1)
    out = postprocess(UPDATE_STEPS)(Delta(delta), TaskContext(spec, residual), np.random.default_rng([seed, 1]))
    sent, new_residual, _ = compress_update(delta, residual, spec, np.random.default_rng([seed, 1]))
    assert encode(out) == encode_tensors(sent)
    assert (out.residual is None) == (new_residual is None)
    for name in new_residual or {}:
        np.testing.assert_array_equal(out.residual[name], new_residual[name])
    decoded = decompress_update(decode_tensors(encode(out)))
    assert set(decoded) == set(delta)


def test_the_control_chain_has_no_clip_step():
    """SCAFFOLD's Δc_i: DeviceRuntime gives it a context with clip_norm 0 (test_scaffold_device
    checks that end to end); the chain itself only adds the residual and compresses."""
    assert clip not in CONTROL_STEPS and compress in CONTROL_STEPS
    rng = np.random.default_rng(3)
    delta = _delta(rng, 100.0)
    spec = CompressionSpec(quant_bits=32, clip_norm=0.5)
    out = postprocess(CONTROL_STEPS)(Delta(delta), TaskContext(dataclasses.replace(spec, clip_norm=0.0)), rng)
    for name, value in decompress_update(list(out.sent)).items():
        np.testing.assert_array_equal(value, delta[name])
    clipped = clip(Delta(delta), TaskContext(spec), rng)
    norm = np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in clipped.tensors.values()))
    assert norm == pytest.approx(0.5, rel=1e-6)


def test_encoding_needs_a_compress_step():
    with pytest.raises(ValueError, match="no compress step"):
        encode(clip(Delta({"x": np.ones(2, np.float32)}), TaskContext(CompressionSpec()), np.random.default_rng(0)))
    assert compress(Delta({"x": np.ones(2, np.float32)}), TaskContext(CompressionSpec()),
                    np.random.default_rng(0)).sent is not None
