"""update_codec's decode checks exactly at their documented limits, and which name a NaN scale
gets (2026-12-06 mutation audit of the update path: benchmarks/results/2026-12-06-mutation4-update/).
Frames are written by test_update_codec's hand writer of the documented layout."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.errors import NonFinite
from fedge.coordinator.validation import decode_delta
from fedge.edge_runtime.kernel.compress import CompressedTensor
from fedge.edge_runtime.kernel.errors import MalformedPayload, NonFiniteValues
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_tensors
from tests.edge_runtime.test_update_codec import _frame, _leb128, _tensor


@pytest.mark.parametrize("coding", [1, 2])
def test_a_sparse_tensor_that_lists_every_index_decodes(coding):
    """count <= size for a sparse tensor (count == size: every index listed, which a hand-made
    or older encoder may write); one more is refused."""
    (t,) = decode_tensors(_frame(_tensor(shape=(3,), sparse=coding, indices=(0, 1, 2), payload=bytes([1, 2, 3]))))
    assert t.indices.tolist() == [0, 1, 2] and t.values.tolist() == [1, 2, 3]
    with pytest.raises(MalformedPayload, match="4 stored values for 3 elements"):
        decode_tensors(_frame(_tensor(shape=(3,), sparse=1, indices=(0, 1, 2, 2), payload=bytes(4))))


def test_max_elements_is_the_most_a_frame_may_declare_not_one_less():
    frame = _frame(_tensor(shape=(1000, 1000), sparse=2, indices=(5,), payload=b"\x01"),
                   _tensor(name=b"v", shape=(24,), sparse=2, indices=(0,), payload=b"\x01"))
    assert [t.shape for t in decode_tensors(frame, max_elements=1_000_024)] == [(1000, 1000), (24,)]
    with pytest.raises(MalformedPayload, match="over 1000023 elements"):
        decode_tensors(frame, max_elements=1_000_023)


def test_the_largest_u32_index_decodes():
    """The gaps decode to indices that must fit u32: 2**32 - 1 itself (a tensor of 2**32
    elements, declared, never allocated) does."""
    frame = _frame(_tensor(shape=(2, 2**31), sparse=2, indices=(), count=1, gap_bytes=_leb128([2**32 - 1]),
                           payload=b"\x01"))
    (t,) = decode_tensors(frame, max_elements=2**32)
    assert t.indices.dtype == np.uint32 and t.indices.tolist() == [2**32 - 1]


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("bits, payload", [(8, bytes(4)), (4, bytes([0x88, 0x88]))])
def test_a_non_finite_scale_of_a_quantized_tensor_is_non_finite_not_a_bad_shape(scale, bits, payload):
    """The module docstring's order: structure first, then NaN/Inf as NonFiniteValues, which
    admission names non_finite (a NaN scale is a NaN update, not a malformed one)."""
    frame = _frame(_tensor(bits=bits, shape=(4,), scale=scale, payload=payload))
    with pytest.raises(NonFiniteValues, match="NaN/Inf in the scale"):
        decode_tensors(frame)
    with pytest.raises(NonFinite, match="scale"):
        decode_delta(frame, {"w": (4,)})


def test_a_tensor_of_max_ndim_dimensions_decodes_and_one_more_is_refused():
    """ndim <= 8 (MAX_NDIM), on both sides."""
    (t,) = decode_tensors(encode_tensors([CompressedTensor("w", (1,) * 7 + (2,), 8, 0.5, None,
                                                           np.array([3, -3], np.int8))]))
    assert t.shape == (1,) * 7 + (2,) and t.values.tolist() == [3, -3]
    with pytest.raises(MalformedPayload, match="ndim 9 > 8"):
        decode_tensors(_frame(_tensor(shape=(1,) * 8 + (2,), payload=bytes(2))))
