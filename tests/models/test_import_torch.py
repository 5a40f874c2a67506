"""Graphs no one here wrote, from torch: a CNN and MLPs exported by torch.onnx.export (ReLU,
Tanh, Sigmoid, GELU and LeakyReLU between the layers; a tanh-approximated GELU that stays
frozen, by name; a CNN whose classifier is a 1x1 Conv after global pooling). Each imports; its
backbone reproduces the source's own prefix; the portable and ORT-training backends train the
imported tail and agree with a float64 numpy reference (import_check.check_backends_agree) and
with torch's own SGD on the same modules to 1e-5.

torch is test-only: torch 2.x CPU is installed by hand where wanted; without it these tests
skip. scikit-learn's models and RapidOCR's pretrained classifier: test_import_sklearn_rapidocr.py.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from tests.models.import_check import (  # noqa: E402
    BATCH,
    HAVE_ORT_TRAINING,
    HYPER,
    STEPS,
    TOL,
    _digits_images,
    check_backends_agree,
)
from tests.torch_export import export  # noqa: E402

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
