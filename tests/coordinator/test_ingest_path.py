"""The coordinator's decode -> validate -> aggregate path, made faster for issue 14, against the
code it replaced, kept here as the oracle (each `_old_*` is the previous implementation, line
for line): the same dense arrays bit for bit, the same sums bit for bit, and the same
rejections, by name and message, for the same hostile frames."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from fedge.coordinator.aggregate import WeightedMean
from fedge.coordinator.errors import BadShape, NonFinite, NormBound, UpdateRejected
from fedge.coordinator.validation import check_finite_and_norm, decode_delta
from fedge.edge_runtime.kernel.compress import (
    LEVELS,
    CompressedTensor,
    compress_update,
    decompress_update,
    dequantize,
)
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_tensors

SHAPES = {"a.weight": (7, 5), "b.bias": (3,), "c": (64,)}


def _old_decompress(tensors: list[CompressedTensor]) -> dict[str, np.ndarray]:
    out = {}
    for t in tensors:
        vals = t.values if t.bits == 32 else dequantize(t.values, t.scale)
        dense = np.zeros(math.prod(t.shape), dtype=np.float32)
        if t.indices is None:
            dense[:] = vals
        else:
            dense[t.indices] = vals
        out[t.name] = dense.reshape(t.shape)
    return out


def _old_check(dense: dict[str, np.ndarray], norm_bound: float, what: str) -> None:
    norm_sq = 0.0
    for name, value in dense.items():
        if not np.all(np.isfinite(value)):
            raise NonFinite(f"{what} {name} holds NaN or Inf")
        norm_sq += float(np.sum(np.square(value, dtype=np.float64)))
    if norm_bound > 0 and np.sqrt(norm_sq) > norm_bound:
        raise NormBound(f"{what} norm {np.sqrt(norm_sq):.4g} > bound {norm_bound:.4g}")


def _old_code_check(values: np.ndarray, bits: int) -> str | None:
    mag = np.abs(values.astype(np.int16))
    top, levels = int(np.argmax(mag)), LEVELS[bits]
    if mag[top] > levels:
        return f"{bits}-bit codes must lie in [-{levels}, {levels}]; found {int(values[top])}"
    return None


def _verdict(check, *args) -> tuple[str, str] | None:
    try:
        check(*args)
    except UpdateRejected as exc:
        return type(exc).__name__, str(exc)
    return None


def _frame(seed: int, bits: int, topk: float) -> bytes:
    rng = np.random.default_rng(seed)
    delta = {n: rng.normal(0, 10.0 ** rng.uniform(-4, 1), s).astype(np.float32) for n, s in SHAPES.items()}
    tensors, _, _ = compress_update(delta, None, CompressionSpec(quant_bits=bits, topk_fraction=topk), rng)
    return encode_tensors(tensors)


@pytest.mark.parametrize("bits,topk", [(32, 1.0), (8, 1.0), (4, 1.0), (32, 0.3), (8, 0.1), (4, 0.5)])
def test_decoded_arrays_are_bit_identical_to_the_old_decoder(bits, topk):
    for seed in range(40):
        frame = _frame(seed, bits, topk)
        new, old = decode_delta(frame, SHAPES), _old_decompress(decode_tensors(frame, expected=SHAPES))
        assert list(new) == list(old)
        for name in old:
            assert new[name].dtype == old[name].dtype == np.float32 and new[name].shape == old[name].shape
            assert new[name].tobytes() == old[name].tobytes()


def test_a_dense_fp32_decode_does_not_alias_the_frame_tensors():
    tensors = decode_tensors(_frame(0, 32, 1.0), expected=SHAPES)
    before = tensors[0].values.copy()
    decompress_update(tensors)[tensors[0].name][...] = 7.0
    assert np.array_equal(tensors[0].values, before)


def _hostile_denses(rng: np.random.Generator) -> list[tuple[dict[str, np.ndarray], float]]:
    cases = []
    for special in (np.nan, np.inf, -np.inf):
        for where in range(len(SHAPES)):
            dense = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in SHAPES.items()}
            name = list(SHAPES)[where]
            dense[name].flat[rng.integers(dense[name].size)] = special
            cases.append((dense, 0.0))
            cases.append((dense, 1e-3))  # over the bound as well: the non-finite verdict comes first
    dense = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in SHAPES.items()}
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in dense.values()))
    for bound in (0.0, norm * 0.5, np.nextafter(norm, 0), norm, np.nextafter(norm, np.inf), norm * 2):
        cases.append((dense, float(bound)))
    huge = {"c": np.full(64, np.finfo(np.float32).max, np.float32)}  # finite, squares near 1e77 each
    cases += [(huge, 0.0), (huge, 1e39)]
    return cases


def test_finite_and_norm_verdicts_match_the_old_check_by_name_and_message():
    rng = np.random.default_rng(1)
    verdicts = []
    for dense, bound in _hostile_denses(rng):
        new = _verdict(check_finite_and_norm, dense, bound, "update")
        old = _verdict(_old_check, dense, bound, "update")
        assert new == old, (bound, new, old)
        verdicts.append(new and new[0])
    # the cases have teeth: every verdict occurs
    assert {"NonFinite", "NormBound", None} <= set(verdicts)


def test_a_quantized_frame_whose_scale_overflows_is_still_non_finite():
    tensors = [CompressedTensor("c", (64,), 8, 3e38, None, np.full(64, 127, np.int8))]  # 127 * 3e38 = inf in f32
    frame = encode_tensors(tensors)
    assert _verdict(check_finite_and_norm, decode_delta(frame, {"c": (64,)}), 0.0, "update") == (
        "NonFinite", "update c holds NaN or Inf")


@pytest.mark.parametrize("bits", [8, 4])
def test_out_of_range_codes_are_refused_with_the_old_message(bits):
    rng = np.random.default_rng(bits)
    low = -128 if bits == 8 else -8
    high = 127 if bits == 8 else 8
    for trial in range(60):
        values = rng.integers(-LEVELS[bits], LEVELS[bits] + 1, 50).astype(np.int8)
        if trial % 3:  # two thirds of the trials carry a bad code or two
            values[rng.integers(50, size=1 + trial % 2)] = low if trial % 2 else high
        expected = _old_code_check(values, bits)
        try:
            CompressedTensor("t", (50,), bits, 0.5, None, values)
            got = None
        except ValueError as exc:
            got = str(exc)
        assert got == expected
    with pytest.raises(BadShape, match=r"codes must lie in \[-127, 127\]; found -128"):
        raw = bytearray(encode_tensors([CompressedTensor("c", (64,), 8, 0.5, None, np.zeros(64, np.int8))]))
        payload_at = len(raw) - 4 - 64
        raw[payload_at] = 0x80  # -128
        raw[-4:] = zlib.crc32(bytes(raw[:-4])).to_bytes(4, "little")
        decode_delta(bytes(raw), {"c": (64,)})


def test_the_streaming_sum_is_bit_identical_to_the_old_formula():
    rng = np.random.default_rng(2)
    mean, sums = WeightedMean(), {}
    for i in range(30):
        update = {n: rng.normal(0, 10.0 ** rng.uniform(-5, 2), s).astype(np.float32) for n, s in SHAPES.items()}
        weight = float(rng.integers(1, 10_000)) if i % 2 else float(rng.uniform(0.1, 3.0))
        mean.add(update, weight)
        for name, value in update.items():  # the old code: acc += float64(value) * weight
            if name in sums:
                sums[name] += np.asarray(value, np.float64) * weight
            else:
                sums[name] = np.asarray(np.asarray(value, np.float64) * weight)
    for name in sums:
        assert mean.sums[name].tobytes() == sums[name].tobytes()
