"""torch models as people write them, exported by torch.onnx.export at opsets 11 to 20, with a
dynamic or a fixed batch, weights inline or in an external data file: BatchNorm1d in and before
the tail, Identity and Dropout between layers, Linear layers without bias, a softmax or
log-softmax at the output (a softmax at opset 11, whose axis flattens), an LSTM backbone read at its
last step, a binary classifier whose Sigmoid comes after a squeeze or flatten,
logits viewed by a shape computed from the batch size, and models exported in training mode.
Each that imports gives, as is, the source's output (ONNX Runtime on the source file, one
example at a time where the batch is fixed); the portable (and ORT-training) backend trains it
as the float64 numpy reference does; and the exported model gives what the trained model
predicts. Each that is refused is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.export import export_model  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.onnx_source import OnnxImportError  # noqa: E402
from tests.models.import_check import HAVE_ORT_TRAINING, _digits_images, check_backends_agree  # noqa: E402
from tests.torch_export import export  # noqa: E402

nn = torch.nn
TOL = 1e-5


def _randomized(model):
    """BatchNorm statistics and affine values that are not the identity, so folding them wrongly shows."""
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


class _View(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class _LastStep(nn.Module):
    """An LSTM over the 8 rows of an 8x8 image (batch first), its last step's output."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, batch_first=True)

    def forward(self, x):
        return self.rnn(x[:, 0])[0][:, -1]


MODELS = {  # name: (layers, images?, what the source's output is: logits, probs or logprobs)
    "bn1d_in_tail": (lambda: (nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                              nn.Linear(16, 10)), False, "logits"),
    "bn1d_first_dropout_identity": (lambda: (nn.BatchNorm1d(64), nn.Identity(), nn.Linear(64, 32), nn.Dropout(0.5),
                                             nn.ReLU(), nn.Identity(), nn.Linear(32, 10), nn.Softmax(dim=1)),
                                    False, "probs"),
    "no_bias_tanh": (lambda: (nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 16, bias=False), nn.Tanh(),
                              nn.Linear(16, 10, bias=False), nn.LogSoftmax(dim=1)), False, "logprobs"),
    "lstm_last_step": (lambda: (_LastStep(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)), True, "logits"),
    "cnn_bn2d_view": (lambda: (nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), _View(),
                               nn.Linear(96, 24), nn.ReLU6(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10)),
                      True, "logits"),
}


def _as_probs(logits: np.ndarray, kind: str) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return {"logits": logits, "probs": np.exp(logp), "logprobs": logp}[kind]


def _source_outputs(path, x: np.ndarray, fixed: bool) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if not fixed:
        return sess.run(None, {"input": x})[0]
    return np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


def _build_check_and_export(path, x, y, fixed: bool, kind: str, source_of=None) -> dict:
    """Import `path` (kept classifier, global head), check it as is against the source, train it
    on the portable backend against the numpy reference, export it and check the export."""
    spec = import_spec(ImportOptions(str(path), head="global"))
    art = path.parent / f"{path.stem}-art"
    manifest = build_artifacts(spec, art, ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(art, expected_model_id=manifest.model_id)
    backend = make_backend("portable", art, manifest, "sgd")
    logits = backend.predict(runtime.initial("shared"), runtime.embed(x))["global"]
    want = (source_of or _source_outputs)(path, x, fixed)
    np.testing.assert_allclose(_as_probs(logits, kind), want, rtol=TOL, atol=TOL)
    trained = {k: v.astype(np.float32) for k, v in check_backends_agree(art, x, y).items()}
    exported = export_model(art, trained, {})
    got = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x})[0]
    np.testing.assert_allclose(got, backend.predict(trained, runtime.embed(x))["global"], rtol=TOL, atol=TOL)
    return trained


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name, opset, fixed, external", [
    ("bn1d_in_tail", 13, False, False), ("bn1d_in_tail", 20, True, True),
    ("bn1d_first_dropout_identity", 18, True, False), ("no_bias_tanh", 17, False, True),
    ("cnn_bn2d_view", 20, True, False), ("cnn_bn2d_view", 18, False, True), ("lstm_last_step", 17, False, False),
    ("lstm_last_step", 14, True, False), ("bn1d_first_dropout_identity", 11, False, False)])
def test_a_torch_model_imports_trains_and_exports(tmp_path, name, opset, fixed, external):
    layers, images, kind = MODELS[name]
    torch.manual_seed(0)
    model = _randomized(nn.Sequential(*layers()))
    x, y = _digits_images(64)
    x = x if images else x.reshape(len(x), -1)
    path = tmp_path / f"{name}.onnx"
    export(torch, model, torch.from_numpy(x[:1] if fixed else x[:2]), path, opset=opset, dynamic=not fixed)
    if external:  # weights in a .data file beside the .onnx, as save_as_external_data writes them
        onnx.save_model(onnx.load(path), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.data", size_threshold=0)
        assert (tmp_path / f"{name}.data").exists()
    _build_check_and_export(path, x, y, fixed, kind)


class _SqueezedBinary(nn.Module):
    """A binary classifier as torch code often ends one: sigmoid(fc(h).squeeze(-1)), shape (N,)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 16), nn.Linear(16, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(torch.relu(self.fc1(x))).squeeze(-1))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_binary_sigmoid_after_a_squeeze_becomes_a_two_class_head(tmp_path):
    """The Squeeze between the one logit and its Sigmoid made the import refuse the model, saying
    that no Sigmoid follows the last layer. It is the same binary classifier as one whose Sigmoid
    comes first: a two-class head [0, z]. Oracle: the source's p, run by ONNX Runtime, as the
    head's class-1 probability; torch's own probability too."""
    torch.manual_seed(2)
    model = _SqueezedBinary()
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "binary.onnx")
    assert [n.op_type for n in onnx.load(tmp_path / "binary.onnx").graph.node][-2:] == ["Squeeze", "Sigmoid"]

    def source(path, x, fixed):
        p = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        with torch.no_grad():
            np.testing.assert_allclose(p, model(torch.from_numpy(x)).numpy(), rtol=TOL, atol=TOL)
        return np.stack([1 - p, p], axis=1)

    _build_check_and_export(tmp_path / "binary.onnx", x, y % 2, False, "probs", source)


class _ThresholdedBinary(nn.Module):
    """A binary classifier that also gives its decision: (p, (p > t).long()), or (z > t) on the logit."""

    def __init__(self, threshold: float, on_logit: bool):
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 16), nn.Linear(16, 1)
        self.threshold, self.on_logit = threshold, on_logit

    def forward(self, x):
        z = self.out(torch.relu(self.fc1(x)))
        p = torch.sigmoid(z)
        return p, ((z if self.on_logit else p).squeeze(-1) > self.threshold).long()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("threshold, on_logit, imports", [(0.5, False, True), (0.3, False, False), (0.0, True, False)])
def test_a_binary_decision_at_the_boundary_is_post_processing(tmp_path, threshold, on_logit, imports):
    """torch's (sigmoid(z) > 0.5).long() beside the probability was refused (Greater is no
    post-processing), though it is the class the two-class head's argmax gives. At 0.5 on p
    it imports and predicts the source's decision; another threshold is another rule, refused, and
    so is (z > 0) on the logit, whose second reader leaves the Sigmoid no binary head's."""
    torch.manual_seed(2)
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    export(torch, _ThresholdedBinary(threshold, on_logit), torch.from_numpy(x[:2]), tmp_path / "b.onnx")
    if not imports:
        with pytest.raises(OnnxImportError, match="Greater node .* is not prediction post-processing|feeds Sigmoid"):
            import_spec(ImportOptions(str(tmp_path / "b.onnx"), head="global"))
        return

    def source(path, xs, fixed):
        p, decision = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": xs})
        probs = np.concatenate([1 - p, p], axis=1)
        np.testing.assert_array_equal(probs.argmax(axis=1), decision)  # the decision is the head's argmax
        return probs

    _build_check_and_export(tmp_path / "b.onnx", x, y % 2, False, "probs", source)


class _ViewedSoftmax(nn.Module):
    """Logits reshaped by a shape computed from the batch size, then a softmax over the last axis:
    (N, 10) as is, or (2N, 5) for two 5-way softmaxes per example."""

    def __init__(self, groups: int):
        super().__init__()
        self.fc1, self.out, self.groups = nn.Linear(64, 16), nn.Linear(16, 10), groups

    def forward(self, x):
        logits = self.out(torch.relu(self.fc1(x)))
        return logits.view(x.size(0) * self.groups, 10 // self.groups).softmax(-1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_softmax_over_a_computed_reshape_of_the_logits_is_run_to_tell(tmp_path):
    """Shape inference cannot follow a Reshape to a shape computed from the batch size; the
    Softmax after it was taken for one over the classes, so two 5-way softmaxes over 10 logits
    imported silently as a 10-class head. Such a Softmax is now run (ONNX Runtime on the source):
    the grouped one is refused by name, the (N, 10) one keeps the head and gives the source's
    probabilities. Oracle: each source row of the grouped model sums to 2, not 1."""
    from fedge.models.onnx_source import OnnxImportError

    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    torch.manual_seed(3)
    export(torch, _ViewedSoftmax(2), torch.from_numpy(x[:2]), tmp_path / "grouped.onnx")
    np.testing.assert_allclose(_source_outputs(tmp_path / "grouped.onnx", x, False).reshape(len(x), 10).sum(1), 2,
                               rtol=1e-5)
    with pytest.raises(OnnxImportError, match="Softmax node '/Softmax' normalizes axis -1 .* run on random inputs, "
                                              "it is not one softmax over those.*--classes K"):
        import_spec(ImportOptions(str(tmp_path / "grouped.onnx")))
    export(torch, _ViewedSoftmax(1), torch.from_numpy(x[:2]), tmp_path / "flat.onnx")
    _build_check_and_export(tmp_path / "flat.onnx", x, y, False, "probs")


class _FlattenedBinary(nn.Module):
    """sigmoid(fc(h).flatten()): exported with a dynamic batch, a Shape of the logit computes the Reshape's target."""

    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 16), nn.Linear(16, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(torch.relu(self.fc1(x))).flatten())


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_shape_read_from_a_tail_tensor_leaves_the_tail_whole(tmp_path):
    """A Shape node reads a tensor's shape, not its values, yet it counted as one more reader:
    logits.view(x.size(0), -1) (a Shape of the input) froze the first Linear in the backbone, and
    sigmoid(logit.flatten()) (a Shape of the logit) refused the model ('no dense tail'). Both now
    import with every Linear in the tail. Oracle: the source run by ONNX Runtime."""
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    torch.manual_seed(4)
    for name, model, kind, labels in (("viewed", _ViewedSoftmax(1), "probs", y),
                                      ("flattened", _FlattenedBinary(), "probs", y % 2)):
        path = tmp_path / f"{name}.onnx"
        export(torch, model, torch.from_numpy(x[:2]), path)
        assert "Shape" in {n.op_type for n in onnx.load(path).graph.node}
        spec = import_spec(ImportOptions(str(path)))
        assert spec.onnx_cut == "input" and [(layer.units, layer.activation) for layer in spec.layers] == [(16, "relu")]
        _build_check_and_export(path, x, labels, False, kind, _two_classes if name == "flattened" else None)


def _two_classes(path, x, fixed) -> np.ndarray:
    """A binary source's p (N,) as the probabilities [1 - p, p] of a two-class head."""
    p = _source_outputs(path, x, fixed)
    return np.stack([1 - p, p], axis=1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("layer, node, how", [
    (lambda: nn.Dropout(0.5), "Dropout node '/2/Dropout'", r"its training_mode input is true"),
    (lambda: nn.BatchNorm1d(32), "BatchNormalization node '/2/BatchNormalization'", r"training_mode = 1")])
def test_a_model_exported_in_training_mode_is_refused_naming_the_node(tmp_path, layer, node, how):
    """torch.onnx.export(..., training=TrainingMode.TRAINING) keeps Dropout dropping at random and
    BatchNorm using the batch's statistics when the model runs. With the Dropout the build failed
    the whole-model check as 'fedge misread a node of the tail'; with the BatchNorm it built
    silently, a backbone whose embedding of an example depends on the rest of its batch. Both are
    refused at import, naming the node. Oracle: ONNX Runtime's runs of the source differ from run
    to run, or from one example at a time."""
    from fedge.models.onnx_source import OnnxImportError

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), layer(), nn.Linear(32, 10)).train()
    path = tmp_path / "train.onnx"
    torch.onnx.export(model, (torch.zeros(2, 64),), str(path), dynamo=False, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, training=torch.onnx.TrainingMode.TRAINING)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    runs = [_source_outputs(path, x, False) for _ in range(2)]
    alone = np.concatenate([_source_outputs(path, x[i:i + 1], False) for i in range(len(x))])
    assert not np.allclose(runs[0], runs[1]) or not np.allclose(runs[0], alone)  # not one function of x
    with pytest.raises(OnnxImportError, match=f"{node} runs in training mode \\({how}\\).*re-export it in inference"):
        import_spec(ImportOptions(str(path)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("opset", [13, 18])
def test_a_batchnorm_after_a_linear_is_folded_into_it(tmp_path, opset, caplog):
    """Linear -> BatchNorm1d (eval) stayed frozen in the backbone, with a notice; the
    BatchNormalization is now folded into the Linear (W * g / sqrt(v + eps), (b - m) * g /
    sqrt(v + eps) + beta), so every Linear is in the tail and trains, before the classifier too.
    Oracles: the source run by ONNX Runtime (as is, to 1e-5), the formula on torch's own
    parameters, and the float64 numpy reference for training."""
    torch.manual_seed(4)
    model = _randomized(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32, eps=1e-3), nn.ReLU(),
                                      nn.Linear(32, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))).eval()
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "bn.onnx", opset=opset)
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "bn.onnx"), head="global"))
    assert (spec.onnx_cut, [(s.units, s.activation) for s in spec.layers]) == ("input", [(32, "relu"), (16, "none")])
    assert "stay frozen" not in caplog.text
    from fedge.models.onnx_import import pretrained_values

    lin, bn = model[0], model[1]
    a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    want_w = lin.weight.detach().double().numpy().T * a
    want_b = (lin.bias.detach().double().numpy() - bn.running_mean.double().numpy()) * a + bn.bias.detach().numpy()
    values = pretrained_values(spec)
    np.testing.assert_allclose(values["fc1.weight"], want_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["fc1.bias"], want_b, rtol=1e-5, atol=1e-6)
    _build_check_and_export(tmp_path / "bn.onnx", x, y, False, "logits")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_prelu_with_one_slope_is_a_leaky_relu(tmp_path, caplog):
    """nn.PReLU() (one slope) and nn.PReLU(k) with every slope equal compute LeakyReLU with that
    slope, yet a PRelu moved the cut after it and froze the Linear before it. They are now read
    as leaky_relu (the slope its negative_slope); per-feature slopes that differ are no one
    leaky_relu and still stay frozen. Oracles: the source run by ONNX Runtime, the numpy reference."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 32), nn.PReLU(init=0.3), nn.Linear(32, 16), nn.PReLU(16, init=0.05),
                          nn.Linear(16, 10))
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "prelu.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "prelu.onnx"), head="global"))
    assert spec.onnx_cut == "input"
    assert [(s.units, s.activation, s.negative_slope) for s in spec.layers] == [(32, "leaky_relu", 0.3),
                                                                                (16, "leaky_relu", 0.05)]
    _build_check_and_export(tmp_path / "prelu.onnx", x, y, False, "logits")
    with torch.no_grad():
        model[3].weight[0] = 0.5  # one slope differs: per-feature PReLU, not one leaky_relu
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "mixed.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "mixed.onnx"), head="global"))
    assert spec.onnx_cut != "input" and spec.layers == ()
    assert "PRelu" in caplog.text and "stay frozen" in caplog.text


def test_a_batchnorm_with_broken_statistics_is_not_folded(tmp_path):
    """A file whose BatchNorm has var + eps < 0 (or a NaN) folded into NaN weights, which the
    whole-model check skips (the source gives NaN too) and the devices would train. Such a
    BatchNorm is not folded: the cut moves after it, the Linear before it stays frozen."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(6, 4)), "b": rng.normal(size=4), "s": np.ones(4), "beta": np.zeros(4),
             "m": np.zeros(4), "v": np.array([1.0, -2.0, 1.0, 1.0]), "w2": rng.normal(size=(4, 3))}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc1"),
             helper.make_node("BatchNormalization", ["h", "s", "beta", "m", "v"], ["n"], name="bn"),
             helper.make_node("Gemm", ["n", "w2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert import_spec(ImportOptions(str(tmp_path / "m.onnx"))).onnx_cut == "n"
    inits["v"][1] = 2.0
    graph.initializer[5].CopyFrom(numpy_helper.from_array(inits["v"].astype(np.float32), "v"))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert import_spec(ImportOptions(str(tmp_path / "m.onnx"))).onnx_cut == "x"  # sound statistics: folded


@pytest.mark.parametrize("bad", ["w2", "b2"])
def test_a_dense_layer_with_nan_weights_is_refused_naming_it(tmp_path, bad):
    """A NaN in a tail layer's weight or bias once imported and built: the whole-model check is
    skipped where the source itself gives NaN, and every device would have trained NaN."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(6, 4)), "b": rng.normal(size=4), "w2": rng.normal(size=(4, 3)),
             "b2": rng.normal(size=3)}
    inits[bad].flat[1] = np.nan
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    what = "weight" if bad == "w2" else "bias"
    with pytest.raises(OnnxImportError, match=f"fc2: its {what} holds 1 NaN or Inf"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
