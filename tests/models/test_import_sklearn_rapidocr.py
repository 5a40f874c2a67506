"""Graphs no one here wrote, beyond torch: scikit-learn MLPClassifiers (ReLU, Tanh, logistic
and identity layers, with or without a ZipMap, and a binary one) converted by skl2onnx, and
RapidOCR's pretrained text-direction classifier from the rapidocr-onnxruntime wheel. Each
imports; as is it gives the source's own probabilities; the portable and ORT-training backends
train the imported tail and agree with a float64 numpy reference to 1e-5
(import_check.check_backends_agree).

skl2onnx is test-only (the [test] extra has it). RapidOCR's wheel is installed with --no-deps
(its onnxruntime requirement would replace the training build):
`pip install --no-deps rapidocr-onnxruntime==1.4.4`; the test finds the model file without
importing the package. torch's exports: test_import_torch.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from tests.models.import_check import HAVE_ORT_TRAINING, TOL, _digits_images, check_backends_agree  # noqa: E402

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
