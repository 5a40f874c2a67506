"""NaN and Inf weights in the frozen backbone of an imported model (models/onnx_finite.py):
refused by name, at import and at the build of a spec file, where they imported silently (the
whole-model check skips a source that gives non-finite values). A -inf that is no weight (a
mask's, a bound's) is the exporter's own and imports."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import import CONV, _cnn, _model  # noqa: E402


def _with_conv(tmp_path, value: float, name: str = "bad.onnx"):
    model = _cnn()
    conv = CONV.copy()
    conv[1, 0, 2, 1] = value
    init = next(i for i in model.graph.initializer if i.name == "cw")
    init.CopyFrom(onnx.numpy_helper.from_array(conv, "cw"))
    onnx.save(model, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("value, what", [(np.nan, "1 NaN"), (np.inf, "1 Inf"), (-np.inf, "1 Inf")])
@pytest.mark.parametrize("options", [{}, {"cut": "feat", "num_classes": 5}])
def test_a_conv_kernel_with_a_nan_or_inf_before_the_cut_is_refused_naming_it(tmp_path, value, what, options):
    path = _with_conv(tmp_path, value)
    with pytest.raises(OnnxImportError, match=rf"stored tensor 'cw', read by Conv node 'conv' in the frozen "
                                              rf"backbone \(before the cut 'feat'\), holds {what} value"):
        import_spec(ImportOptions(str(path), **options))


def test_the_cli_names_it_without_a_traceback(tmp_path, capsys):
    from fedge.tools.cli import main

    path = _with_conv(tmp_path, np.nan)
    assert main(["build-artifacts", "--from-onnx", str(path), str(tmp_path / "art"), "--ort-training", "no"]) != 0
    err = capsys.readouterr().err
    assert "'cw', read by Conv node 'conv'" in err and "Traceback" not in err
    assert not (tmp_path / "art").exists()


def test_a_spec_file_naming_such_a_source_is_refused_at_the_build(tmp_path):
    """A spec written by hand (or for another file) never passes through import_spec."""
    spec = import_spec(ImportOptions(str(_with_conv(tmp_path, 0.5, "good.onnx"))))
    bad = _with_conv(tmp_path, np.nan)
    spec = dataclasses.replace(spec, onnx=str(bad), onnx_sha256=hashlib.sha256(bad.read_bytes()).hexdigest())
    with pytest.raises(OnnxImportError, match="'cw', read by Conv node 'conv'"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_an_inf_no_weight_op_reads_imports_but_a_nan_there_does_not(tmp_path):
    """Max(x, -inf) is x: a bound, not a weight. Oracle: the import's cut and features."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]
    nodes = [helper.make_node("Max", ["x", "floor"], ["m"], name="floor_max"),
             helper.make_node("Sin", ["m"], ["s"], name="sin"),
             helper.make_node("MatMul", ["s", "w"], ["prob"], name="out")]
    inits = {"floor": np.array([-np.inf], np.float32), "w": np.ones((4, 3), np.float32)}
    onnx.save(_model(nodes, inits, inputs), tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert (spec.onnx_cut, spec.onnx_features) == ("s", 4)
    inits["floor"] = np.array([np.nan], np.float32)  # NaN is no bound: refused wherever it is read
    onnx.save(_model(nodes, inits, inputs), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="'floor', read by Max node 'floor_max'.*holds 1 NaN"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
