"""Graphs no one here wrote: a CNN and an MLP exported by torch.onnx.export, a scikit-learn
MLPClassifier converted by skl2onnx, and RapidOCR's pretrained text-direction classifier from
the rapidocr-onnxruntime wheel. Each imports; its backbone reproduces the source's own prefix;
the portable and ORT-training backends train the imported tail and agree with a float64 numpy
reference (and, for the torch models, with torch's own SGD on the same modules) to 1e-5.

torch and skl2onnx are test-only (the [test] extra has skl2onnx; torch 2.x CPU is installed by
hand where wanted). RapidOCR's wheel is installed with --no-deps (its onnxruntime requirement
would replace the training build): `pip install --no-deps rapidocr-onnxruntime==1.4.4`; the
test finds the model file without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from fedge.edge_runtime.kernel.errors import BackendUnavailable  # noqa: E402
from fedge.edge_runtime.kernel.manifest import load_manifest  # noqa: E402
from fedge.edge_runtime.kernel.ort_loader import load_ort_training  # noqa: E402
from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.edge_runtime.trainer.base import StepHyper  # noqa: E402
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from tests.torch_export import export  # noqa: E402

TOL = 1e-5
STEPS, BATCH = 12, 16
HYPER = StepHyper(lr=0.1)  # plain SGD: what ort-training's SGD runs
try:
    load_ort_training("api")
    HAVE_ORT_TRAINING = True
except BackendUnavailable:
    HAVE_ORT_TRAINING = False


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k], np.float64) - b[k]).max()) for k in a)


def train(backend, init: dict, batches) -> dict:
    backend.start(init, None, init, None)
    for i in range(STEPS):
        backend.step(*batches[i % len(batches)], HYPER)
    return backend.current()[0]


def check_backends_agree(art: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Train the imported tail on every backend from the same start; return the reference's params."""
    manifest = load_manifest(art)
    runtime = ModelRuntime(art, expected_model_id=manifest.model_id)
    z = runtime.embed(x)
    batches = [(z[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(z), BATCH)]
    init = {**runtime.initial("shared"), **runtime.initial("personal")}
    exact = train(NumpyBackend(art, manifest, "sgd", dtype=np.float64), init, batches)
    assert max_diff(exact, init) > 100 * TOL  # it did train
    names = ["portable"] + (["ort-training"] if HAVE_ORT_TRAINING else [])
    for name in names:
        got = train(make_backend(name, art, manifest, "sgd"), init, batches)
        assert max_diff(got, exact) < TOL, name
    return exact


# ------------------------------------------------------------------------------------ torch

@pytest.fixture(scope="module")
def torch_mod():
    return pytest.importorskip("torch")


def _torch_cnn(torch):
    nn = torch.nn

    class Cnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.fc1 = nn.Linear(6 * 4 * 4, 24)
            self.fc2 = nn.Linear(24, 10)

        def prefix(self, x):
            return torch.flatten(nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2), 1)

        def forward(self, x):
            return torch.softmax(self.fc2(torch.relu(self.fc1(self.prefix(x)))), dim=1)

    return Cnn()


def _digits_images(n: int):
    from fedge.tools.datasets import load_digits

    x, y = load_digits()
    return x[:n].reshape(-1, 1, 8, 8), y[:n]


def _torch_sgd_reference(torch, layers: list, z: np.ndarray, y: np.ndarray, acts: list | None = None) -> dict:
    """Plain torch: the same Linear modules, `acts` between (ReLU), cross-entropy, SGD."""
    acts = acts or [torch.relu] * (len(layers) - 1)
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=HYPER.lr)
    zt, yt = torch.from_numpy(z).double(), torch.from_numpy(y)
    for i in range(STEPS):
        lo = (i % (len(z) // BATCH + (len(z) % BATCH > 0))) * BATCH
        h = zt[lo:lo + BATCH]
        for j, layer in enumerate(layers):
            h = layer(h)
            if j < len(layers) - 1:
                h = acts[j](h)
        loss = torch.nn.functional.cross_entropy(h, yt[lo:lo + BATCH])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {f"layer{j}": (layer.weight.detach().numpy().T, layer.bias.detach().numpy())
            for j, layer in enumerate(layers)}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_cnn(torch_mod, tmp_path):
    torch = torch_mod
    torch.manual_seed(0)
    model = _torch_cnn(torch)
    model.bn.running_mean.uniform_(-0.2, 0.2)  # non-trivial statistics, folded or not by the exporter
    x, y = _digits_images(96)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "cnn.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "cnn.onnx")))
    assert spec.onnx_features == 96 and [layer.units for layer in spec.layers] == [24]
    build_artifacts(spec, tmp_path / "lora", ort_training=HAVE_ORT_TRAINING)
    with torch.no_grad():
        z_torch = model.prefix(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ModelRuntime(tmp_path / "lora").embed(x), z_torch, atol=TOL)
    check_backends_agree(tmp_path / "lora", x, y)

    # All of the tail trained as plain layers, with one head: torch's own SGD is the reference.
    shared = import_spec(ImportOptions(str(tmp_path / "cnn.onnx"), default_role="shared", head="global"))
    build_artifacts(shared, tmp_path / "shared", ort_training=HAVE_ORT_TRAINING)
    ours = check_backends_agree(tmp_path / "shared", x, y)
    ref = _torch_sgd_reference(torch, [model.fc1.double(), model.fc2.double()], z_torch, y)
    for ours_name, ref_name in (("fc1", "layer0"), ("head_global", "layer1")):
        np.testing.assert_allclose(ours[f"{ours_name}.weight"], ref[ref_name][0], atol=TOL)
        np.testing.assert_allclose(ours[f"{ours_name}.bias"], ref[ref_name][1], atol=TOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_mlp(torch_mod, tmp_path):
    torch = torch_mod
    torch.manual_seed(1)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 10))
    x, y = _digits_images(80)
    x = x.reshape(len(x), -1)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "mlp.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "mlp.onnx"), roles={"fc1": "frozen", "fc2": "personal"}))
    assert spec.onnx_cut == "input" and [layer.mode for layer in spec.layers] == ["frozen", "personal"]
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    with torch.no_grad():
        np.testing.assert_allclose(ModelRuntime(tmp_path / "art").embed(x),
                                   torch.relu(model[0](torch.from_numpy(x))).numpy(), atol=TOL)
    check_backends_agree(tmp_path / "art", x, y)


def _exported_mlp(torch, path, seed: int, layers, n: int = 80):
    """nn.Sequential(*layers(nn)) exported to `path`, and n flattened digits: (model, x, y)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(*layers(torch.nn))
    x, y = _digits_images(n)
    x = x.reshape(len(x), -1)
    export(torch, model, torch.from_numpy(x[:2]), path)
    return model, x, y


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_mlp_with_tanh_and_sigmoid(torch_mod, tmp_path):
    """Tanh and Sigmoid layers join the trainable tail (they once stayed frozen in the backbone);
    torch's autograd and SGD on the same modules are the reference."""
    torch = torch_mod
    model, x, y = _exported_mlp(torch, tmp_path / "mlp.onnx", 2, lambda nn: (
        nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 16), nn.Sigmoid(), nn.Linear(16, 10)))
    spec = import_spec(ImportOptions(str(tmp_path / "mlp.onnx"), default_role="shared", head="global"))
    assert spec.onnx_cut == "input" and [layer.activation for layer in spec.layers] == ["tanh", "sigmoid"]
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    ours = check_backends_agree(tmp_path / "art", x, y)
    linears = [model[0].double(), model[2].double(), model[4].double()]
    ref = _torch_sgd_reference(torch, linears, x.astype(np.float64), y, [torch.tanh, torch.sigmoid])
    for ours_name, ref_name in (("fc1", "layer0"), ("fc2", "layer1"), ("head_global", "layer2")):
        np.testing.assert_allclose(ours[f"{ours_name}.weight"], ref[ref_name][0], atol=TOL)
        np.testing.assert_allclose(ours[f"{ours_name}.bias"], ref[ref_name][1], atol=TOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_mlp_with_gelu_and_leaky_relu(torch_mod, tmp_path):
    """nn.GELU() (exported below opset 20 as Div, Erf, Add, Mul, Mul) and nn.LeakyReLU(0.2) join
    the trainable tail; they once stayed frozen in the backbone, the GELU's Linear with them.
    As is, the import gives the source's logits (ONNX Runtime on the source); trained, the
    backends agree, and torch's autograd and SGD on the same modules are the reference."""
    torch = torch_mod
    model, x, y = _exported_mlp(torch, tmp_path / "mlp.onnx", 3, lambda nn: (
        nn.Linear(64, 24), nn.GELU(), nn.Linear(24, 16), nn.LeakyReLU(0.2), nn.Linear(16, 10)))
    spec = import_spec(ImportOptions(str(tmp_path / "mlp.onnx"), default_role="shared", head="global",
                                     num_classes=0))
    assert spec.onnx_cut == "input"
    assert [(layer.activation, layer.negative_slope) for layer in spec.layers] == [("gelu", 0.01), ("leaky_relu", 0.2)]
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    _assert_gives_the_sources_logits(tmp_path / "art", tmp_path / "mlp.onnx", x)
    ours = check_backends_agree(tmp_path / "art", x, y)
    linears = [model[0].double(), model[2].double(), model[4].double()]
    acts = [torch.nn.functional.gelu, lambda h: torch.nn.functional.leaky_relu(h, 0.2)]
    ref = _torch_sgd_reference(torch, linears, x.astype(np.float64), y, acts)
    for ours_name, ref_name in (("fc1", "layer0"), ("fc2", "layer1"), ("head_global", "layer2")):
        np.testing.assert_allclose(ours[f"{ours_name}.weight"], ref[ref_name][0], atol=TOL)
        np.testing.assert_allclose(ours[f"{ours_name}.bias"], ref[ref_name][1], atol=TOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_mlp_with_tanh_gelu_says_which_layers_stay_frozen(torch_mod, tmp_path, caplog):
    """GELU's tanh approximation is not x Phi(x) (up to 5e-4 off): fedge cannot train it, so the
    auto cut moves past it, the first Linear stays frozen in the backbone, and a warning names
    the frozen layer and the ops. Oracle: the source's logits, run by ONNX Runtime."""
    _, x, _ = _exported_mlp(torch_mod, tmp_path / "gelu.onnx", 3, lambda nn: (
        nn.Linear(64, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)), n=20)
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "gelu.onnx"), head="global"))
    assert [(layer.units, layer.activation) for layer in spec.layers] == [(16, "relu")]
    assert "1 dense layer(s) stay frozen in the backbone (Gemm '/0/Gemm')" in caplog.text
    assert "Tanh" in caplog.text
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    _assert_gives_the_sources_logits(tmp_path / "art", tmp_path / "gelu.onnx", x)


def _assert_gives_the_sources_logits(art, source_file, x) -> None:
    """The imported model as is (global head) against ONNX Runtime on the source file."""
    import onnxruntime as ort

    runtime = ModelRuntime(art)
    logits = make_backend("portable", art, runtime.manifest, "sgd").predict(
        runtime.initial("shared"), runtime.embed(x))["global"]
    source = ort.InferenceSession(str(source_file), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, source.run(None, {"input": x})[0], atol=TOL)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_cnn_with_a_1x1_conv_classifier_takes_a_new_head_on_the_pooled_features(torch_mod, tmp_path, caplog):
    """A CNN whose classifier is a 1x1 Conv after global pooling has no dense tail: the import
    once refused it however it was cut. With --classes K and --cut at the pooling's output, the
    graph up to the cut is the frozen backbone and only the new head trains. Oracles: torch's
    pooled features for the embeddings; the backends agree on the training; the exported
    model is z @ W + b of the trained head."""
    from fedge.models.export import export_model
    from fedge.models.onnx_source import OnnxImportError

    torch = torch_mod
    nn = torch.nn
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Conv2d(6, 10, 1), nn.Flatten())
    x, y = _digits_images(64)
    export(torch, model, torch.from_numpy(x[:2]), tmp_path / "cnn.onnx")
    with pytest.raises(OnnxImportError, match="no dense tail"):
        import_spec(ImportOptions(str(tmp_path / "cnn.onnx"), num_classes=10))
    pooled = next(n.output[0] for n in onnx.load(tmp_path / "cnn.onnx").graph.node
                  if n.op_type in ("GlobalAveragePool", "ReduceMean"))
    with pytest.raises(OnnxImportError, match="rank 4"):  # keeping the classifier still needs a dense one
        import_spec(ImportOptions(str(tmp_path / "cnn.onnx"), cut=pooled))
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "cnn.onnx"), cut=pooled, num_classes=10, head="global"))
    assert "only the new head trains" in caplog.text
    assert (spec.layers, spec.onnx_features, spec.num_classes, spec.onnx_keep_head) == ((), 6, 10, False)
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(tmp_path / "art")
    with torch.no_grad():
        np.testing.assert_allclose(runtime.embed(x), model[:3](torch.from_numpy(x)).flatten(1).numpy(), atol=TOL)
    trained = check_backends_agree(tmp_path / "art", x, y)
    exported = export_model(tmp_path / "art", {k: v.astype(np.float32) for k, v in trained.items()}, {})
    import onnxruntime as ort

    logits = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x})[0]
    np.testing.assert_allclose(logits, runtime.embed(x) @ trained["head_global.weight"] + trained["head_global.bias"],
                               atol=TOL)


# ---------------------------------------------------------------------------- scikit-learn


def test_sklearn_mlp_classifier(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    x, y = _digits_images(300)
    x = x.reshape(len(x), -1)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=200, random_state=0).fit(x[:200], y[:200])
    onnx.save(skl2onnx.to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17), tmp_path / "skl.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "skl.onnx")))
    assert [layer.units for layer in spec.layers] == [32, 16] and spec.num_classes == 10
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(tmp_path / "art")
    manifest = runtime.manifest
    logits = make_backend("portable", tmp_path / "art", manifest, "sgd").predict(
        {**runtime.initial("shared"), **runtime.initial("personal")}, runtime.embed(x[200:]))["personal"]
    np.testing.assert_allclose(_softmax(logits), clf.predict_proba(x[200:]), atol=TOL)  # imported as is
    check_backends_agree(tmp_path / "art", x[200:], y[200:])


@pytest.mark.parametrize("activation, zipmap", [("tanh", False), ("logistic", True), ("identity", False)])
def test_sklearn_mlp_classifier_tanh_and_logistic(tmp_path, activation, zipmap):
    """scikit-learn's other hidden activations (Tanh, Sigmoid in the graph; identity: none) import
    as trainable layers, with or without the ZipMap of the probabilities: as is the model gives
    scikit-learn's own predict_proba, and the backends train alike."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    x, y = _digits_images(300)
    x = x.reshape(len(x), -1)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation=activation, max_iter=200, random_state=0)
    clf.fit(x[:200], y[:200])
    onnx.save(skl2onnx.to_onnx(clf, x[:1], options={"zipmap": zipmap}, target_opset=17), tmp_path / "skl.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "skl.onnx")))
    expected = {"tanh": "tanh", "logistic": "sigmoid", "identity": "none"}[activation]
    assert [(layer.units, layer.activation) for layer in spec.layers] == [(32, expected), (16, expected)]
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(tmp_path / "art")
    logits = make_backend("portable", tmp_path / "art", runtime.manifest, "sgd").predict(
        {**runtime.initial("shared"), **runtime.initial("personal")}, runtime.embed(x[200:]))["personal"]
    np.testing.assert_allclose(_softmax(logits), clf.predict_proba(x[200:]), atol=TOL)
    check_backends_agree(tmp_path / "art", x[200:], y[200:])


def test_sklearn_binary_mlp_classifier(tmp_path):
    """A binary MLPClassifier ends in one logit and a Sigmoid: imported as a two-class head
    [0, z], as is it gives scikit-learn's own predict_proba, and the backends train it alike."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_breast_cancer
    from sklearn.neural_network import MLPClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(x[:100], y[:100])
    onnx.save(skl2onnx.to_onnx(clf, x[:1], options={"zipmap": False}, target_opset=17), tmp_path / "bin.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "bin.onnx")))
    assert [layer.units for layer in spec.layers] == [16] and spec.num_classes == 2
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    runtime = ModelRuntime(tmp_path / "art")
    logits = make_backend("portable", tmp_path / "art", runtime.manifest, "sgd").predict(
        {**runtime.initial("shared"), **runtime.initial("personal")}, runtime.embed(x[100:]))["personal"]
    np.testing.assert_allclose(_softmax(logits), clf.predict_proba(x[100:]), atol=TOL)  # imported as is
    check_backends_agree(tmp_path / "art", x[100:260], y[100:260])


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------- a real pretrained model

def _rapidocr_cls() -> Path:
    found = importlib.util.find_spec("rapidocr_onnxruntime")  # locates, does not import (no cv2 needed)
    if found is None or not found.submodule_search_locations:
        pytest.skip("rapidocr-onnxruntime not installed (pip install --no-deps rapidocr-onnxruntime==1.4.4)")
    path = Path(list(found.submodule_search_locations)[0]) / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return path


def text_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k digits as RapidOCR text lines: four digits side by side, 48x192 RGB, normalized
    as PaddleOCR does ((v - 0.5) / 0.5); label 1 when the line is rotated 180 degrees."""
    from fedge.tools.datasets import load_mnist5k

    images, _ = load_mnist5k()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(images), (n, 4))
    digits = images[picks].reshape(n, 4, 28, 28)
    big = np.repeat(np.repeat(digits, 2, axis=2), 2, axis=3)[:, :, 4:52, 4:52]  # 56 -> 48 centre crop
    line = 1.0 - np.concatenate(list(big.transpose(1, 0, 2, 3)), axis=2)  # dark ink on white, (n, 48, 192)
    y = rng.integers(0, 2, n)
    line[y == 1] = line[y == 1][:, ::-1, ::-1]
    x = np.repeat(((line - 0.5) / 0.5)[:, None], 3, axis=1).astype(np.float32)
    return x, y.astype(np.int64)


def test_rapidocr_text_direction_classifier(tmp_path):
    import onnxruntime as ort

    path = _rapidocr_cls()
    spec = import_spec(ImportOptions(str(path), input_shape=(3, 48, 192), head="global"))
    assert spec.onnx_features == 200 and spec.num_classes == 2 and spec.layers == ()  # MatMul+Add classifier
    build_artifacts(spec, tmp_path / "art", ort_training=HAVE_ORT_TRAINING)
    x, y = text_lines(96, seed=0)
    runtime = ModelRuntime(tmp_path / "art")
    logits = make_backend("portable", tmp_path / "art", runtime.manifest, "sgd").predict(
        runtime.initial("shared"), runtime.embed(x))["global"]
    source = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_softmax(logits), source, atol=TOL)  # backbone + pretrained head = the source
    check_backends_agree(tmp_path / "art", x, y)
