"""The ONNX importer on small graphs written with onnx.helper: what it reads (Gemm with transB,
alpha and beta folded; MatMul + Add), where it cuts, what it refuses and why, and the backbone
it extracts, each against a numpy forward of the same weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.kernel.activations import activate  # noqa: E402
from fedge.edge_runtime.kernel.errors import ConfigError  # noqa: E402
from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from fedge.models.onnx_source import UnknownLayerRole  # noqa: E402
from fedge.models.spec import load_spec  # noqa: E402

RNG = np.random.default_rng(3)
W1 = RNG.normal(size=(7, 6)).astype(np.float32)  # Gemm transB: (out, in)
B1 = RNG.normal(size=(7,)).astype(np.float32)
W2 = RNG.normal(size=(7, 3)).astype(np.float32)  # MatMul: (in, out)
B2 = RNG.normal(size=(3,)).astype(np.float32)
CONV = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)


def _model(nodes, inits, inputs=None, out="prob"):
    inputs = inputs or [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["b", 2, 6, 6])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _cnn(tail_act="Relu"):
    """img (2,6,6) -> Conv(4, 3x3, valid) -> Relu -> GAP -> Flatten (4) -> Gemm (7) -> act
    -> MatMul+Add (3) -> Softmax"""
    nodes = [
        helper.make_node("Conv", ["img", "cw"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["cr"], name="crelu"),
        helper.make_node("GlobalAveragePool", ["cr"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["feat"], name="flat"),
        helper.make_node("Gemm", ["feat", "w1", "b1"], ["h1"], name="fc1", transB=1, alpha=0.5, beta=2.0),
        helper.make_node(tail_act, ["h1"], ["a1"], name="act1"),
        helper.make_node("MatMul", ["a1", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1),
    ]
    return _model(nodes, {"cw": CONV, "w1": W1[:, :4].copy(), "b1": B1, "w2": W2, "b2": B2})


def _reference(x):
    """numpy forward of _cnn: (features at the cut, hidden, logits)."""
    n = x.shape[0]
    c = np.zeros((n, 4, 4, 4), np.float64)
    for i in range(4):
        for j in range(4):
            c[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + 3, j:j + 3], CONV)
    feat = np.maximum(c, 0).mean(axis=(2, 3))
    h = np.maximum(feat @ (0.5 * W1[:, :4].T) + 2.0 * B1, 0)
    return feat, h, h @ W2 + B2


@pytest.fixture()
def cnn_file(tmp_path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), path)
    return path


def test_auto_cut_is_where_the_dense_tail_begins(cnn_file):
    spec = import_spec(ImportOptions(str(cnn_file)))
    assert spec.onnx_cut == "feat" and spec.onnx_features == 4
    assert [(layer.name, layer.units, layer.mode) for layer in spec.layers] == [("fc1", 7, "lora")]
    assert spec.input_shape == (2, 6, 6) and spec.num_classes == 3 and spec.onnx_keep_head


def test_backbone_and_pretrained_tail_match_a_numpy_forward(cnn_file, tmp_path):
    spec = import_spec(ImportOptions(str(cnn_file), head="global"))
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x = RNG.normal(size=(9, 2, 6, 6)).astype(np.float32)
    feat, _, logits = _reference(x.astype(np.float64))
    z = runtime.embed(x)
    np.testing.assert_allclose(z, feat, atol=1e-5)
    backend = make_backend("portable", tmp_path / "art", manifest, "sgd")
    got = backend.predict({**runtime.initial("shared"), **runtime.initial("personal")}, z)["global"]
    np.testing.assert_allclose(got, logits, atol=1e-4)


def test_frozen_tail_layers_join_the_backbone(cnn_file, tmp_path):
    spec = import_spec(ImportOptions(str(cnn_file), roles={"fc1": "frozen"}, num_classes=5))
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    assert manifest.embedding_shape == (7,) and manifest.input_shape == (2, 6, 6)
    x = RNG.normal(size=(4, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art").embed(x), _reference(x.astype(np.float64))[1], atol=1e-4)
    assert {p.name: p.shape for p in manifest.trainable}["head_personal.weight"] == (7, 5)  # a new head


def test_manifest_records_the_source_hash_and_the_cut(cnn_file, tmp_path):
    import hashlib

    manifest = build_artifacts(import_spec(ImportOptions(str(cnn_file))), tmp_path / "art", ort_training=False)
    spec = json.loads((tmp_path / "art" / "manifest.json").read_text())["spec"]
    assert spec["onnx_sha256"] == hashlib.sha256(cnn_file.read_bytes()).hexdigest()
    assert spec["onnx_cut"] == "feat" and spec["onnx"] == "../cnn.onnx"  # relative to the folder: no builder's path
    # The path is provenance only: the same file elsewhere is the same model.
    moved = tmp_path / "elsewhere.onnx"
    moved.write_bytes(cnn_file.read_bytes())
    again = build_artifacts(import_spec(ImportOptions(str(moved), name="cnn")), tmp_path / "art2", ort_training=False)
    assert again.model_id == manifest.model_id


def test_a_changed_source_file_is_refused(cnn_file, tmp_path):
    spec = import_spec(ImportOptions(str(cnn_file)))
    onnx.save(_cnn("Relu"), cnn_file)  # same graph, re-saved: same bytes, fine
    build_artifacts(spec, tmp_path / "a", ort_training=False)
    cnn_file.write_bytes(cnn_file.read_bytes() + b"\x00")
    with pytest.raises(OnnxImportError, match="re-import"):
        build_artifacts(spec, tmp_path / "b", ort_training=False)


def test_spec_file_with_onnx_path_relative_to_it(cnn_file, tmp_path):
    (tmp_path / "m.toml").write_text('[model]\nonnx = "cnn.onnx"\nname = "mine"\nhead = "global"\n'
                                     'num_classes = 4\nroles = { fc1 = "personal" }\n')
    spec = load_spec(tmp_path / "m.toml")
    assert spec.name == "mine" and spec.layers[0].mode == "personal" and spec.num_classes == 4
    assert not spec.onnx_keep_head


def test_simulate_model_takes_the_folder_an_import_built(cnn_file, tmp_path, monkeypatch):
    """`build-artifacts --from-onnx cnn.onnx out/mine` writes no spec file; `simulate --model out/mine`
    was refused, so the user had to write one by hand. The folder's manifest is the spec, from any cwd."""
    from fedge.edge_runtime.kernel.manifest import load_manifest
    from fedge.tools.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["build-artifacts", "--from-onnx", "cnn.onnx", "out/mine", "--role", "fc1=personal",
                 "--classes", "4", "--ort-training", "no"]) == 0
    # relative to the folder: an absolute path shipped the builder's home folder to every device
    assert json.loads((tmp_path / "out" / "mine" / "manifest.json").read_text())["spec"]["onnx"] == "../../cnn.onnx"
    monkeypatch.chdir(tmp_path / "out")  # the source's path was relative to where the build ran
    spec = load_spec("mine")
    assert spec == import_spec(ImportOptions(str(cnn_file), roles={"fc1": "personal"}, num_classes=4))
    again = build_artifacts(spec, tmp_path / "again", ort_training=False)
    assert again.model_id == load_manifest(tmp_path / "out" / "mine").model_id
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="folder with no manifest.json"):
        load_spec(tmp_path / "empty")


@pytest.mark.parametrize("act, name", [("Tanh", "tanh"), ("Sigmoid", "sigmoid"), ("LeakyRelu", "leaky_relu")])
def test_tanh_sigmoid_and_leaky_relu_layers_join_the_tail(tmp_path, act, name):
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(act), path)
    spec = import_spec(ImportOptions(str(path)))
    assert spec.onnx_cut == "feat" and [(layer.units, layer.activation) for layer in spec.layers] == [(7, name)]


@pytest.mark.parametrize("act, match", [("Softplus", "Softplus node 'act1'"), ("Elu", "Elu node 'act1'")])
def test_unsupported_activation_names_the_node(tmp_path, act, match, caplog):
    path = tmp_path / "m.onnx"
    onnx.save(_cnn(act), path)
    with pytest.raises(OnnxImportError, match=match):
        import_spec(ImportOptions(str(path), cut="feat"))
    # auto: the only chain that qualifies starts after the activation, and a warning says what stays frozen
    with caplog.at_level(logging.WARNING, logger="fedge.models"):
        spec = import_spec(ImportOptions(str(path)))
    assert spec.onnx_cut == "a1" and spec.layers == ()
    assert f"1 dense layer(s) stay frozen in the backbone (Gemm 'fc1'): the trainable tail starts after {act}," \
        in caplog.text
    with pytest.raises(UnknownLayerRole, match=r"no layer fc1 exists: the tail's hidden layers are none .*the "
                       "layers before the cut stay frozen in the backbone, since the tail starts after the last "
                       "activation other than Relu"):  # here the moved cut is why fc1 is not in the tail
        import_spec(ImportOptions(str(path), roles={"fc1": "lora"}))
    caplog.clear()
    import_spec(ImportOptions(str(path), cut="a1"))  # a cut the user chose needs no notice
    assert "stay frozen" not in caplog.text


def test_cut_inside_the_conv_stack_says_why(cnn_file):
    with pytest.raises(OnnxImportError, match="'cr' has rank 4"):
        import_spec(ImportOptions(str(cnn_file), cut="cr"))
    with pytest.raises(OnnxImportError, match="no tensor named 'nope'"):
        import_spec(ImportOptions(str(cnn_file), cut="nope"))


def test_two_inputs_and_computed_weights_are_refused(tmp_path):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4]) for n in ("x", "state")]
    path = tmp_path / "two.onnx"
    onnx.save(_model([helper.make_node("Add", ["x", "state"], ["prob"])], {}, inputs), path)
    with pytest.raises(OnnxImportError, match=r"2 inputs \['x', 'state'\]"):
        import_spec(ImportOptions(str(path)))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]
    nodes = [helper.make_node("Neg", ["w"], ["wn"], name="negate"),
             helper.make_node("MatMul", ["x", "wn"], ["prob"], name="mm")]
    onnx.save(_model(nodes, {"w": np.ones((4, 2), np.float32)}, inputs), path)
    with pytest.raises(OnnxImportError, match="MatMul node 'mm': its weight 'wn' is computed"):
        import_spec(ImportOptions(str(path), cut="x"))


def test_free_input_dims_need_input_shape(tmp_path):
    model = _cnn()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    path = tmp_path / "free.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxImportError, match="give input_shape"):
        import_spec(ImportOptions(str(path)))
    assert import_spec(ImportOptions(str(path), input_shape=(2, 6, 6))).input_shape == (2, 6, 6)


def test_bad_roles_and_files(cnn_file, tmp_path):
    with pytest.raises(UnknownLayerRole, match="a role for fc7, but no layer fc7 exists: the tail's hidden layers "
                       r"are fc1 \(ONNX nodes \['fc1'\]\), and the classifier 'fc2' is the head, which takes no "
                       "role$"):  # no activation moved the cut here: the reason a cut moves once followed
        import_spec(ImportOptions(str(cnn_file), roles={"fc7": "lora"}))
    with pytest.raises(ConfigError, match="role 'trained'"):
        ImportOptions(str(cnn_file), roles={"fc1": "trained"})
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxImportError, match="not an ONNX model"):
        import_spec(ImportOptions(str(tmp_path / "junk.onnx")))


@pytest.mark.parametrize("elem, name", [(TensorProto.DOUBLE, "DOUBLE"), (TensorProto.INT64, "INT64")])
def test_an_input_other_than_float32_is_named_with_its_type(tmp_path, elem, name):
    """skl2onnx with a float64 example writes a DOUBLE input; the error once said only 'not float32'."""
    inputs = [helper.make_tensor_value_info("x", elem, ["b", 4])]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["prob"], name="mm")]
    onnx.save(_model(nodes, {"w": np.ones((4, 2), np.float32)}, inputs), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"input 'x' is {name}, not FLOAT \(float32\); re-export"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_cli_names_a_tail_of_no_hidden_layers(tmp_path, capsys):
    """Only the classifier after the cut: the import line said 'tail ; head dual'."""
    from fedge.tools.cli import main

    nodes = [helper.make_node("Gemm", ["x", "w"], ["prob"], name="out")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]
    onnx.save(_model(nodes, {"w": np.ones((4, 3), np.float32)}, inputs), tmp_path / "m.onnx")
    assert main(["build-artifacts", "--from-onnx", str(tmp_path / "m.onnx"), str(tmp_path / "art"),
                 "--ort-training", "no"]) == 0
    assert "tail no hidden layers; head dual" in capsys.readouterr().out


def test_a_weight_stored_transposed_is_read_through_its_transpose(tmp_path):
    """torch without constant folding writes `x @ w.t()` as MatMul(x, Transpose(w)); the weight
    was refused as computed. perm [0, 1] is the identity. Oracle: the source run by ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    from fedge.models.onnx_import import pretrained_values

    w1t, w2 = W1, W2  # stored (out, in) = (7, 6) for the first layer, (in, out) for the second
    x_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 6])]
    nodes = [helper.make_node("Transpose", ["w1t"], ["w1"], name="t1"),
             helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["a1"], name="act1"),
             helper.make_node("Transpose", ["w2"], ["w2_same"], name="t2", perm=[0, 1]),
             helper.make_node("MatMul", ["a1", "w2_same"], ["prob"], name="out")]
    model = _model(nodes, {"w1t": w1t, "b1": B1, "w2": w2}, x_in)
    onnx.save(model, tmp_path / "t.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "t.onnx"), head="global"))
    assert spec.onnx_cut == "x" and [(layer.units, layer.activation) for layer in spec.layers] == [(7, "relu")]
    values = pretrained_values(spec)
    x = RNG.normal(size=(5, 6)).astype(np.float32)
    ours = np.maximum(x @ values["fc1.weight"] + values["fc1.bias"], 0) @ values["head_global.weight"]
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, source.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate, trained", [("none", True), ("tanh", False)])
def test_an_opset_20_gelu_node_joins_the_tail_unless_it_is_the_tanh_form(tmp_path, approximate, trained):
    """Gelu is one node from opset 20 on: its exact form trains, its tanh approximation (another
    function) stays in the backbone. Oracle: ONNX Runtime on the source, and a plain numpy
    forward of the exact GELU."""
    import onnxruntime as ort

    model = _cnn("Gelu")
    next(n for n in model.graph.node if n.op_type == "Gelu").attribute.extend(
        [helper.make_attribute("approximate", approximate)])
    model.opset_import[0].version = 20
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    spec = import_spec(ImportOptions(str(path), head="global"))
    assert (spec.onnx_cut, [layer.activation for layer in spec.layers]) == (("feat", ["gelu"]) if trained else
                                                                           ("a1", []))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = np.random.default_rng(1).normal(size=(5, 2, 6, 6)).astype(np.float32)
    runtime = ModelRuntime(tmp_path / "art")
    logits = make_backend("portable", tmp_path / "art", runtime.manifest, "sgd").predict(
        runtime.initial("shared"), runtime.embed(x))["global"]
    probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"img": x})[0]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-5)
    if trained:
        feat = _reference(x.astype(np.float64))[0]
        pre = feat @ (0.5 * W1[:, :4].T) + 2.0 * B1
        hidden = activate("gelu", pre)
        np.testing.assert_allclose(logits, hidden @ W2 + B2, atol=1e-5)


@pytest.mark.parametrize("num_classes, tampered", [(0, "head_global.weight"), (5, "fc1.weight")])
def test_the_build_checks_the_whole_imported_model_against_its_source(tmp_path, monkeypatch, num_classes, tampered):
    """Each importer misreading the helpers found gave a model that ran and trained and was
    another function. The build now runs the source (ONNX Runtime, up to the kept logits or the
    last hidden layer) and fedge's backbone plus a numpy tail on the same inputs: a tail value
    read 1% off (the stand-in for a misread node) stops the build by name."""
    import fedge.models.onnx_import as onnx_import

    path = tmp_path / "m.onnx"
    onnx.save(_cnn("Relu"), path)
    spec = import_spec(ImportOptions(str(path), num_classes=num_classes, head="global"))
    build_artifacts(spec, tmp_path / "ok", ort_training=False)  # as read: the same function
    real = onnx_import.pretrained_values
    monkeypatch.setattr(onnx_import, "pretrained_values",
                        lambda s: {k: v * np.float32(1.01) if k == tampered else v for k, v in real(s).items()})
    with pytest.raises(OnnxImportError, match="does not compute what the source does at 'a1'" if num_classes else
                       "does not compute what the source does at 'logits'"):
        build_artifacts(spec, tmp_path / "bad", ort_training=False)
    assert not (tmp_path / "bad" / "manifest.json").exists()
