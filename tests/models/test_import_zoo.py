"""Models from elsewhere that the import misread (a zoo of torch.onnx.export, skl2onnx and
onnxruntime.quantization models: benchmarks/results/2026-12-07-import-zoo): torch's
`h.double().float()` between layers, `(W @ x.T).T` and `torch.einsum("bi,oi->bo", x, W)` froze
a layer that trains; a statically
quantized (QDQ) tail was refused as having computed weights, and quantized models were refused
without saying they were quantized. Oracle: ONNX Runtime running the source file (the imported
model as is, to 1e-5), the float64 numpy reference for training (import_check), torch itself."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.onnx_probe import run_to  # noqa: E402
from fedge.models.onnx_source import OnnxImportError, stored_tensors  # noqa: E402
from tests.models.import_check import HAVE_ORT_TRAINING, _digits_images, check_backends_agree  # noqa: E402
from tests.models.test_import_torch_variants import _build_check_and_export  # noqa: E402
from tests.torch_export import export  # noqa: E402

nn = torch.nn
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class _DoubleThenFloat(nn.Module):
    """fc1's output through float64 and back, as code that mixes precisions writes it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x).double().float()))))


class _LeftMatmul(nn.Module):
    """Weights kept (out, in) and multiplied from the left: (W @ x.T).T + b, or (W @ x.T + b).T
    with b (out, 1)."""

    def __init__(self, bias_inside: bool, then=None):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(32, 64) * 0.1)
        self.b1 = nn.Parameter(torch.randn(32, 1) * 0.1 if bias_inside else torch.randn(32) * 0.1)
        self.fc2, self.bias_inside, self.then = nn.Linear(32, 10), bias_inside, then or nn.ReLU()

    def forward(self, x):
        h = (self.w1 @ x.T + self.b1).T if self.bias_inside else (self.w1 @ x.T).T + self.b1
        return self.fc2(self.then(h))


class _Einsum(nn.Module):
    """A Linear written as torch.einsum over W kept (out, in) or (in, out), with a bias after it."""

    def __init__(self, equation: str, then=None):
        super().__init__()
        shape = (32, 64) if "oi" in equation else (64, 32)
        self.w1, self.b1 = nn.Parameter(torch.randn(*shape) * 0.1), nn.Parameter(torch.randn(32) * 0.1)
        self.fc2, self.equation, self.then = nn.Linear(32, 10), equation, then or nn.ReLU()

    def forward(self, x):
        operands = (self.w1, x) if self.equation.startswith("oi") else (x, self.w1)
        return self.fc2(self.then(torch.einsum(self.equation, *operands) + self.b1))


def _flat_digits(n: int = 64):
    x, y = _digits_images(n)
    return x.reshape(len(x), -1), y


def _import(path, **kw):
    return import_spec(ImportOptions(str(path), head="global", **kw))


def test_a_double_float_round_trip_between_layers_leaves_them_trainable(tmp_path):
    """Cast to double then back to float32 is the identity on float32 values; it moved the cut
    after it and froze fc1 (a notice said 'starts after Cast, Relu')."""
    torch.manual_seed(0)
    model = _DoubleThenFloat()
    x, y = _flat_digits()
    path = tmp_path / "double.onnx"
    export(torch, model, torch.from_numpy(x[:2]), path)
    assert [n.op_type for n in onnx.load(path).graph.node][1:3] == ["Cast", "Cast"]
    spec = _import(path)
    assert (spec.onnx_cut, [layer.units for layer in spec.layers]) == ("input", [32, 16])
    _build_check_and_export(path, x, y, False, "logits")


def test_a_float16_round_trip_still_ends_the_tail(tmp_path):
    """float32 -> float16 -> float32 rounds: not passed over (fc1 stays in the backbone)."""

    class Half(_DoubleThenFloat):
        def forward(self, x):
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x).half().float()))))

    x, _ = _flat_digits()
    export(torch, Half(), torch.from_numpy(x[:2]), tmp_path / "half.onnx")
    assert [layer.units for layer in _import(tmp_path / "half.onnx").layers] == [16]


@pytest.mark.parametrize("bias_inside", [False, True], ids=["bias-after", "bias-inside"])
def test_a_layer_written_as_w_times_x_transposed_trains(tmp_path, bias_inside):
    """(W @ x.T).T + b was refused ('no dense tail': the Transpose named as a computed weight);
    (W @ x.T + b).T froze the layer with no notice at all. Both are x @ W.T + b: one dense layer."""
    torch.manual_seed(1)
    model = _LeftMatmul(bias_inside)
    x, y = _flat_digits()
    path = tmp_path / "left.onnx"
    export(torch, model, torch.from_numpy(x[:2]), path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops[:3] == ["Transpose", "MatMul", "Add" if bias_inside else "Transpose"]
    spec = _import(path)
    assert (spec.onnx_cut, [(s.units, s.activation) for s in spec.layers]) == ("input", [(32, "relu")])
    assert spec.layers[0].mode != "frozen"
    trained = _build_check_and_export(path, x, y, False, "logits")
    assert any(k.startswith("fc1.") for k in trained)  # fc1's own parameters (its LoRA adapter) trained


@pytest.mark.parametrize("equation", ["bi,oi->bo", "bi,io->bo", "oi,bi->bo"])
def test_a_layer_written_as_an_einsum_trains(tmp_path, equation):
    """torch.einsum("bi,oi->bo", x, W) + b stayed frozen in the backbone, and no notice said so;
    so did the weight-first form einsum("oi,bi->bo", W, x)."""
    torch.manual_seed(4)
    x, y = _flat_digits()
    path = tmp_path / "einsum.onnx"
    export(torch, _Einsum(equation), torch.from_numpy(x[:2]), path)
    assert [n.op_type for n in onnx.load(path).graph.node][0] == "Einsum"
    spec = _import(path)
    assert (spec.onnx_cut, [(s.units, s.activation) for s in spec.layers]) == ("input", [(32, "relu")])
    _build_check_and_export(path, x, y, False, "logits")


@pytest.mark.parametrize("model, label", [(lambda: _LeftMatmul(True, nn.ELU()), "MatMul '/MatMul'"),
                                          (lambda: _Einsum("bi,oi->bo", nn.ELU()), "Einsum '/Einsum'"),
                                          (lambda: _Einsum("oi,bi->bo", nn.ELU()), "Einsum '/Einsum'")],
                         ids=["left-matmul", "einsum", "einsum-weight-first"])
def test_a_frozen_layer_written_otherwise_is_named(tmp_path, caplog, model, label):
    """Where an activation the tail cannot train (ELU) follows such a layer, it stays frozen, and
    the notice names it (it named nothing: the notice looked for MatMul(x, W) and Gemm only)."""
    x, _ = _flat_digits()
    export(torch, model(), torch.from_numpy(x[:2]), tmp_path / "elu.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        assert _import(tmp_path / "elu.onnx").layers == ()
    assert f"1 dense layer(s) stay frozen in the backbone ({label})" in caplog.text


def _import_graph(path, nodes, inits, input_shape):
    """Save the graph of `nodes` from input 'inp' (input_shape) to output 'out' (N, 3), and import it."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return import_spec(ImportOptions(str(path), head="global"))


def test_an_einsum_that_is_no_dense_layer_is_not_named_frozen(tmp_path, caplog):
    """Einsum("bi,i->bi", x, s) scales each feature: no layer, and the notice once named it a
    frozen dense layer ('weight has shape (4,)'), since it took any Einsum of a stored tensor."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "s"),
             numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    nodes = [helper.make_node("Einsum", ["inp", "s"], ["h"], equation="bi,i->bi", name="scale"),
             helper.make_node("Gemm", ["h", "W", "b"], ["out"], name="fc")]
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = _import_graph(tmp_path / "scale.onnx", nodes, inits, [None, 4])
    assert spec.onnx_cut == "h" and "stay frozen" not in caplog.text


def test_a_frozen_projection_einsum_of_three_labels_is_named(tmp_path, caplog):
    """Einsum('bsi,io->bso', x, W) (a transformer's projection) is no layer the tail reads, and it
    stays frozen before the cut: the notice names it (a mend that named only 2-D equations lost it)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(10, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    nodes = [helper.make_node("Einsum", ["inp", "W1"], ["e"], equation="bsi,io->bso", name="proj"),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["h"], name="flat"),
             helper.make_node("Gemm", ["h", "W", "b"], ["out"], name="fc")]
    with caplog.at_level("WARNING", logger="fedge.models"):
        _import_graph(tmp_path / "proj.onnx", nodes, inits, [None, 2, 4])
    assert "1 dense layer(s) stay frozen in the backbone (Einsum 'proj')" in caplog.text


@pytest.mark.parametrize("op", ["MatMul", "Einsum"])
def test_a_projection_of_a_3d_input_is_refused_as_a_layer_for_its_rank(tmp_path, caplog, op):
    """torch's Linear on (batch, seq, features), then a mean over seq and a classifier: the
    projection stays frozen, and the notice says why, its rank, for the MatMul as for its Einsum
    twin (the MatMul was read as a layer with no rank check, and the notice blamed the Relu and
    ReduceMean after it, which the tail does not need to train through)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    attrs = {"equation": "bsi,io->bso"} if op == "Einsum" else {}
    nodes = [helper.make_node(op, ["inp", "W1"], ["m"], name="proj", **attrs),
             helper.make_node("Add", ["m", "b1"], ["e"], name="proj_bias"),
             helper.make_node("Relu", ["e"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["h"], axes=[1], keepdims=0, name="mean"),
             helper.make_node("Gemm", ["h", "W", "b"], ["out"], name="fc")]
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = _import_graph(tmp_path / "proj.onnx", nodes, inits, [None, 2, 4])
    assert spec.onnx_cut == "h" and spec.layers == ()
    assert f"1 dense layer(s) stay frozen in the backbone ({op} 'proj')" in caplog.text
    assert f"it cannot start at {op} node 'proj': " in caplog.text and "3-D" in caplog.text


def _calibration(x: np.ndarray):
    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def _torch_mlp(tmp_path, x):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10))
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "float.onnx")
    return tmp_path / "float.onnx"


def _without_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with its activations' QuantizeLinear -> DequantizeLinear pairs bypassed: the
    weights stay stored quantized behind DequantizeLinear (weight-only quantization)."""
    quantize = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    passes = {n.output[0]: quantize[n.input[0]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantize}
    kept = [n for n in model.graph.node if n.output[0] not in quantize and n.output[0] not in passes]
    for node in kept:
        node.input[:] = [passes.get(i, i) for i in node.input]
    out = model.graph.output[0].name
    if out in passes:  # the last pair wrote the graph's output: its input is renamed to it
        for node in kept:
            node.output[:] = [out if o == passes[out] else o for o in node.output]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def test_a_static_qdq_model_folds_its_weights_and_names_its_quantized_activations(tmp_path):
    """quantize_static (QDQ): each weight is DequantizeLinear(int8, scale, zero point), a constant
    whose values are read as ONNX Runtime computes them (exactly); the 8-bit rounding between the
    layers is what no float tail computes, and the refusal now names it and says the model is
    quantized (it named the DequantizeLinear as a computed weight). With those pairs bypassed
    (weight-only quantization) the model imports and every layer trains."""
    x, y = _flat_digits()
    src = _torch_mlp(tmp_path, x)
    qdq = tmp_path / "qdq.onnx"
    quantization.quantize_static(str(src), str(qdq), _calibration(x), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, extra_options={"QDQKeepRemovableActivations": True})
    model = onnx.load(qdq)
    weights = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and "weight" in n.input[0]]
    assert len(weights) == 3
    stored = stored_tensors(model.graph)
    for name, want in zip(weights, run_to(model, {"input": x[:1]}, weights)):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(stored[name]), want)
    with pytest.raises(OnnxImportError, match=r"QuantizeLinear node '.*' after .*; the model is quantized "
                                              r"\(QuantizeLinear node 'input_QuantizeLinear'.*nodes_to_exclude"):
        _import(qdq)
    weight_only = tmp_path / "weight_only.onnx"
    onnx.save(_without_activation_qdq(model), weight_only)
    spec = _import(weight_only)
    assert (spec.onnx_cut, [(s.units, s.activation) for s in spec.layers]) == ("input", [(32, "relu"), (16, "tanh")])
    _build_check_and_export(weight_only, x, y, False, "logits")


def test_a_dynamically_quantized_model_is_refused_as_quantized(tmp_path):
    """quantize_dynamic: DynamicQuantizeLinear and MatMulInteger in place of the dense layers; the
    refusal listed the graph's ops and now says it is quantized and what imports. Its advice, a
    new head on a float tensor (--cut NAME --classes K), keeps the quantized layers as the frozen
    backbone, which gives what ONNX Runtime gives there on the source, and the head trains."""
    x, y = _flat_digits()
    dyn = tmp_path / "dyn.onnx"
    quantization.quantize_dynamic(str(_torch_mlp(tmp_path, x)), str(dyn))
    with pytest.raises(OnnxImportError, match=r"found no dense tail.*the model is quantized \(DynamicQuantizeLinear "
                                              r"node .*MatMulInteger node .*import the float model"):
        _import(dyn)
    spec = _import(dyn, cut="/1/Relu_output_0", num_classes=10)
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    for row in x[:4]:  # one example at a time: dynamic quantization's scale is the batch's
        (want,) = run_to(onnx.load(dyn), {"input": row[None]}, ["/1/Relu_output_0"])
        np.testing.assert_allclose(runtime.embed(row[None]), want, rtol=1e-5, atol=1e-5)
    check_backends_agree(tmp_path / "art", x, y)


def test_a_quantized_backbone_before_a_float_tail_runs_as_the_backbone(tmp_path):
    """quantize_static QDQ of the convolutions only: the quantized ops are the frozen backbone's and
    the float Linear layers after them train (kept working: a regression check)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    x, y = _digits_images(64)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "cnn.onnx")
    qdq = tmp_path / "cnn_qdq.onnx"
    quantization.quantize_static(str(tmp_path / "cnn.onnx"), str(qdq), _calibration(x),
                                 quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=["Conv"])
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(qdq).graph.node}
    assert [s.units for s in _import(qdq).layers] == [16]
    _build_check_and_export(qdq, x, y, False, "logits")


_Q = np.random.default_rng(5).integers(-128, 127, (3, 4)).astype(np.int8)


@pytest.mark.parametrize("q, scale, zero, attrs", [
    (_Q, np.float32([0.1, 0.2, 0.3, 0.4]), np.int8([1, 2, 3, 4]), {}),  # per axis 1 (the default)
    (_Q, np.float32([0.1, 0.2, 0.3]), np.int8([1, 2, 3]), {"axis": -2}),
    (_Q.view(np.uint8), np.float32([0.05]), np.uint8([128]), {}),  # per tensor, ORT's shape [1]
    (np.arange(-5, 5, dtype=np.int32), np.float32(1e-3), None, {}),  # a bias: int32, no zero point
    (_Q, np.float32([0.1, 0.2, 0.3]), np.int8([1, 2, 3]), {}),  # 3 scales for axis 1 of 4: ORT fails
    (_Q, np.float32(0.1), np.uint8(3), {}),  # a zero point of another type: ORT refuses the model
], ids=["per-axis", "axis-2", "per-tensor", "int32-bias", "wrong-axis", "zero-type"])
def test_a_stored_dequantize_gives_what_onnx_runtime_gives(q, scale, zero, attrs):
    """Oracle: ONNX Runtime running the DequantizeLinear alone; where it fails, the tensor is left
    computed (None), never a traceback or a value ORT would not give."""
    from onnx import TensorProto, helper, numpy_helper

    from fedge.models.onnx_quantized import dequantized

    values = {"q": q, "scale": np.asarray(scale)} | ({} if zero is None else {"zero": np.asarray(zero)})
    stored = {k: numpy_helper.from_array(v, k) for k, v in values.items()}
    node = helper.make_node("DequantizeLinear", list(values), ["y"], **attrs)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(stored.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    try:
        (want,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    except Exception:  # noqa: BLE001 - ORT's own types
        want = None
    got = dequantized(node, stored)
    assert (got is None) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(got, want)
