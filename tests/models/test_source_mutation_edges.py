"""Edges of reading a user's ONNX file (models/onnx_sparse.py, onnx_source.py, onnx_scope.py,
onnx_extract.py) that the mutation8-build audit found no test reaching. Oracles: the dense
values the file stands for, ONNX Runtime's own reading, or a hand case refused by name."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec, pretrained_values  # noqa: E402
from tests.models.test_onnx_sparse import _save, _sparse, _weights  # noqa: E402


def test_a_negative_sparse_index_is_refused_not_wrapped_to_the_end(tmp_path):
    """numpy's dense[-1] = v writes the last place: a broken file imported with a weight moved."""
    wb, w1 = _weights()
    w1[0, 0] = 1.0
    broken = _sparse(w1, "w1", rank_indices=False)
    flat = numpy_helper.to_array(broken.indices).copy()
    flat[0] = -1
    broken.indices.CopyFrom(numpy_helper.from_array(flat.astype(np.int64), ""))
    _save(tmp_path / "m.onnx", _sparse(wb, "wb", rank_indices=True), broken)
    with pytest.raises(OnnxImportError, match=r"sparse tensor 'w1' of shape \(4, 3\).*not one place each inside"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="s"))


def test_a_constants_sparse_value_imports_as_its_dense_value(tmp_path):
    """Constant(sparse_value=...) for the tail's weight: stored dense at load, so it trains from
    the file's values (it was read as a weight computed, not stored)."""
    wb, w1 = _weights()
    w1[0, 0] = 2.5
    _save(tmp_path / "m.onnx", _sparse(wb, "wb", rank_indices=True), w1)
    model = onnx.load(tmp_path / "m.onnx")
    (init,) = [t for t in model.graph.initializer if t.name == "w1"]
    model.graph.initializer.remove(init)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w1"], name="w1_const",
                                                sparse_value=_sparse(w1, "w1", rank_indices=True)))
    onnx.save(model, tmp_path / "c.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "c.onnx"), head="global", cut="s"))
    np.testing.assert_array_equal(pretrained_values(spec)["head_global.weight"], w1)


def _tail_model(extra_nodes, inits, matmul_w="w2"):
    """x (N, 12) -> Gemm fc1 -> Relu -> the nodes `extra_nodes` (reading 'a', writing 'd') -> MatMul -> y."""
    from tests.models.test_import_mutation_edges import _model

    return _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"), *extra_nodes,
                   helper.make_node("MatMul", ["d", matmul_w], ["y"], name="out")], "y", inits)


def test_a_dropout_whose_training_mode_is_stored_false_imports(tmp_path):
    """Only a Dropout that runs in training mode is refused: training_mode stored as false is
    inference mode, as ONNX Runtime runs it (the identity); the export gives the source's y."""
    from tests.models.test_onnx_import_outsider import _assert_export_gives_the_sources_y

    model = _tail_model([helper.make_node("Dropout", ["a", "ratio", "train"], ["d"], name="drop")],
                        {"ratio": np.array(0.5, np.float32), "train": np.array(False)})
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


def test_a_transpose_with_perm_0_1_keeps_the_stored_matrix_as_it_is(tmp_path):
    """MatMul(a, Transpose(w2, perm=[0, 1])): the identity permutation, not w2.T (torch without
    constant folding writes only perm=[1, 0]); the export gives ONNX Runtime's y of the source."""
    from tests.models.test_onnx_import_outsider import _assert_export_gives_the_sources_y

    model = _tail_model([helper.make_node("Identity", ["a"], ["d"], name="id"),
                         helper.make_node("Transpose", ["w2"], ["w2_same"], name="same", perm=[0, 1])], {},
                        matmul_w="w2_same")
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


def test_a_negative_external_data_offset_is_refused_not_read_from_the_files_end(tmp_path):
    """offset -160 in a 160-byte data file: Python's bytes[-160:-80] is bytes 0..80, so a broken
    entry would import another tensor's bytes as w1. Refused by name, with the bytes it asked for."""
    from tests.models.test_onnx_external_data import W1
    from tests.models.test_onnx_external_data import _save as save_external

    (tmp_path / "w.data").write_bytes(W1.tobytes() + W1.tobytes())  # 2 x 80 bytes
    path = save_external(tmp_path, "w.data")
    model = onnx.load(path, load_external_data=False)
    (w1,) = [t for t in model.graph.initializer if t.name == "w1"]
    w1.external_data.add(key="offset", value=str(-2 * W1.nbytes))
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxImportError, match=r"tensor 'w1' keeps its data in 'w\.data' at bytes -160\.\.-80"):
        import_spec(ImportOptions(str(path)))
