"""Sparse initializers in an imported model (models/onnx_sparse.py): stored dense at load, so a
sparse weight trains, a sparse backbone weight is cut out with the backbone, and its NaN is
refused; a broken one is refused by name. Oracle: a numpy forward of the dense weights."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec, pretrained_values  # noqa: E402

RNG = np.random.default_rng(41)


def _sparse(dense: np.ndarray, name: str, rank_indices: bool) -> onnx.SparseTensorProto:
    """Only the nonzeros of `dense`, with indices (NNZ,) into the flat tensor or (NNZ, rank)."""
    where = np.flatnonzero(dense)
    indices = np.stack(np.unravel_index(where, dense.shape), axis=1) if rank_indices else where
    return helper.make_sparse_tensor(numpy_helper.from_array(dense.reshape(-1)[where], name),
                                     numpy_helper.from_array(indices.astype(np.int64), ""), dense.shape)


def _weights() -> tuple[np.ndarray, np.ndarray]:
    wb = RNG.normal(size=(4, 4)).astype(np.float32) * (RNG.random((4, 4)) < 0.5)
    w1 = RNG.normal(size=(4, 3)).astype(np.float32) * (RNG.random((4, 3)) < 0.5)
    return wb, w1


def _save(path, wb_sparse: onnx.SparseTensorProto, w1: onnx.SparseTensorProto | np.ndarray) -> None:
    """x (N, 4) -> MatMul wb (sparse) -> Sin -> 's' -> MatMul w1 (sparse, or dense) + Add -> Softmax."""
    dense = {"b1": np.arange(3, dtype=np.float32), **({"w1": w1} if isinstance(w1, np.ndarray) else {})}
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["m"], name="backbone_mm"),
             helper.make_node("Sin", ["m"], ["s"], name="sin"),
             helper.make_node("MatMul", ["s", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["logits"], name="fc1_bias"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in dense.items()],
                              sparse_initializer=[wb_sparse, *([] if isinstance(w1, np.ndarray) else [w1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_sparse_weights_import_as_their_dense_values(tmp_path):
    """The tail's weight was refused as computed, and the backbone's ended the build in Extractor's ValueError."""
    wb, w1 = _weights()
    _save(tmp_path / "m.onnx", _sparse(wb, "wb", rank_indices=True), _sparse(w1, "w1", rank_indices=False))
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global", cut="s"))
    np.testing.assert_array_equal(pretrained_values(spec)["head_global.weight"], w1)
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id).embed(x),
                               np.sin(x.astype(np.float64) @ wb), rtol=1e-5, atol=1e-6)


def test_a_nan_in_a_sparse_backbone_weight_is_refused(tmp_path):
    wb, w1 = _weights()
    wb[0, 0] = np.nan
    _save(tmp_path / "m.onnx", _sparse(wb, "wb", rank_indices=True), w1)  # imported unchecked: wb was no stored value
    with pytest.raises(OnnxImportError, match=r"stored tensor 'wb', read by MatMul node 'backbone_mm'.*1 NaN"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="s"))


@pytest.mark.parametrize("index", [12, None, "repeat"], ids=["outside", "one-index-short", "repeated"])
def test_a_sparse_tensor_whose_indices_do_not_fit_is_refused_by_name(tmp_path, index):
    wb, w1 = _weights()
    w1[0, 0] = 1.0
    broken = _sparse(w1, "w1", rank_indices=False)
    flat = numpy_helper.to_array(broken.indices).copy()
    if index == "repeat":  # the last value written where the first went (onnx.checker refuses it)
        index = flat[0]
    flat = np.append(flat[:-1], index) if index is not None else flat[:-1]  # 12: past the 4 x 3 values
    broken.indices.CopyFrom(numpy_helper.from_array(flat.astype(np.int64), ""))
    _save(tmp_path / "m.onnx", _sparse(wb, "wb", rank_indices=True), broken)
    with pytest.raises(OnnxImportError, match=r"sparse tensor 'w1' of shape \(4, 3\): \d+ values for indices of "
                                              r"shape \(\d+,\) that are not one place each inside the shape"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="s"))
