"""Red-team probe of `fedge build-artifacts --from-onnx` on graphs no fedge code wrote: torch
(TorchScript exporter, opsets 13-21, batch fixed at 1 or free, constant folding off, external
data), onnx.helper graphs (graphs_hand.py) and skl2onnx classifiers. Each variant is checked by
harness.probe; runs.json holds every outcome. From the repository root, in the test venv:

    STOCK_PYTHON=/path/to/stock-ort-venv/bin/python .venv-test/bin/python \\
        benchmarks/results/2026-12-07-byom-redteam/run_probe.py

On 2026-12-07 (onnx 1.16.2, onnxruntime-training 1.19.2 to build and train, stock onnxruntime
1.32.0 to run the exports, torch 2.13.0, skl2onnx 1.20.0): 134 variants, 127 imported (each as
its source to 1e-5, trained as the float64 reference to 1e-5, its device export as the device
to 1e-5) and 7 refused by name; no traceback, no silently wrong model. Before this commit's fix
4 of the 127 imported with a layer frozen that now trains: a weight through an Identity or a
Cast of a float16 initializer (with no notice saying so), and a Cast to float32 between layers.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[2])]
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from graphs_hand import graphs  # noqa: E402
from harness import probe  # noqa: E402

nn = torch.nn
ROOT = Path(tempfile.mkdtemp(prefix="byom-probe-"))
RNG = np.random.default_rng(0)
X20, Y5 = RNG.normal(size=(64, 20)).astype(np.float32), RNG.integers(0, 5, 64)


def randomized(model: nn.Module) -> nn.Module:
    """Norm statistics and affine values that are not the identity, so misreading them shows."""
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, nn.BatchNorm1d | nn.LayerNorm):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def folder(name: str) -> Path:
    d = ROOT / "".join(c if c.isalnum() else "_" for c in name)
    d.mkdir()
    return d / "m.onnx"


def torch_export(name, model, opset=17, fixed=False, fold=True, external=False, inputs=None) -> Path:
    path = folder(name)
    example = inputs or (torch.from_numpy(X20[:1] if fixed else X20[:2]),)
    names = [f"input{i}" if len(example) > 1 else "input" for i in range(len(example))]
    torch.onnx.export(model.eval(), example, str(path), dynamo=False, input_names=names, opset_version=opset,
                      dynamic_axes=None if fixed else {n: {0: "batch"} for n in names}, do_constant_folding=fold)
    if external:
        onnx.save_model(onnx.load(path), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="m.data", size_threshold=0)
    return path


SEQUENTIAL = {  # name: (layers, what the output is)
    "Linear-BatchNorm1d-ReLU-Dropout-Linear-ReLU-Dropout-Linear": (lambda: (
        nn.Linear(20, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 12), nn.ReLU(),
        nn.Dropout(0.1), nn.Linear(12, 5)), "logits"),
    "Linear-ReLU-BatchNorm1d-Dropout-Linear": (lambda: (
        nn.Linear(20, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.Linear(16, 5)), "logits"),
    "Linear-LayerNorm-ReLU-Linear-ReLU-Linear": (lambda: (
        nn.Linear(20, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5)), "logits"),
    "Linear-ReLU-Linear-Softmax": (lambda: (nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5), nn.Softmax(dim=1)),
                                   "probs"),
    "Linear-Tanh-Linear-LogSoftmax": (lambda: (nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5),
                                               nn.LogSoftmax(dim=-1)), "logprobs"),
    "Unflatten-Flatten-Linear-ReLU-Linear": (lambda: (nn.Unflatten(1, (4, 5)), nn.Flatten(), nn.Linear(20, 16),
                                                      nn.ReLU(), nn.Linear(16, 5)), "logits"),
}


class Reshaped(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.view(-1, 4, 5).reshape(x.shape[0], 20))))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(20, 20), nn.Linear(20, 20), nn.Linear(20, 5)
        self.fc2.weight = self.fc1.weight

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Outputs(nn.Module):
    """Two heads (a, b), (logits, softmax), or a float -> double -> float round trip between layers."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc1, self.fc2, self.fc3 = kind, nn.Linear(20, 16), nn.Linear(16, 5), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.kind == "double":
            return self.fc2(h.double().float())
        logits = self.fc2(h)
        return (logits, self.fc3(h)) if self.kind == "two heads" else (logits, logits.softmax(-1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(20, 5)

    def forward(self, a, b):
        return self.fc(a + b)


def torch_variants():
    for name, (layers, kind) in SEQUENTIAL.items():
        for opset in (13, 17, 18, 20, 21):
            for fixed in (False, True):
                torch.manual_seed(0)
                tag = f"torch {name} opset {opset} {'batch 1' if fixed else 'dynamic batch'}"
                yield tag, torch_export(tag, randomized(nn.Sequential(*layers())), opset, fixed), X20, Y5, \
                    {"fixed": fixed, "kind": kind}
        torch.manual_seed(0)
        tag = f"torch {name} opset 17 no constant folding"
        yield tag, torch_export(tag, randomized(nn.Sequential(*layers())), fold=False), X20, Y5, {"kind": kind}
        tag = f"torch {name} opset 18 batch 1 external data"
        yield tag, torch_export(tag, randomized(nn.Sequential(*layers())), 18, True, external=True), X20, Y5, \
            {"fixed": True, "kind": kind}
    torch.manual_seed(1)
    for fixed in (False, True):
        tag = f"torch view+reshape before the tail {'batch 1' if fixed else 'dynamic batch'}"
        yield tag, torch_export(tag, Reshaped(), fixed=fixed), X20, Y5, {"fixed": fixed}
    yield "torch tied weights (fc2.weight = fc1.weight)", torch_export("tied", Tied()), X20, Y5, {}
    for kind in ("two heads", "logits and softmax", "double"):
        yield f"torch outputs: {kind}", torch_export(kind, Outputs(kind)), X20, Y5, {}
    two = (torch.zeros(2, 20), torch.zeros(2, 20))
    yield "torch two inputs", torch_export("two inputs", TwoInputs(), inputs=two), X20, Y5, {}


def hand_variants():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 12)).astype(np.float32), rng.integers(0, 4, 64)
    for name, (model, keywords) in graphs().items():
        path = folder(f"hand {name}")
        onnx.save(model, path)
        rank3 = len(model.graph.input[0].type.tensor_type.shape.dim) == 3
        yield f"helper: {name}", path, x.reshape(64, 3, 4) if rank3 else x, y, keywords


def sklearn_variants():
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x, y = (x / 16).astype(np.float32)[:300], y[:300]
    nozip = {"zipmap": False}
    cases = [("MLP relu (label, ZipMap probabilities)", MLPClassifier((16,), random_state=0), y, None, None),
             ("MLP tanh 16-8 (label, probabilities)", MLPClassifier((16, 8), "tanh", random_state=0), y, nozip, None),
             ("MLP relu binary", MLPClassifier((16,), random_state=0), y % 2, nozip, None),
             ("MLP identity 16-8", MLPClassifier((16, 8), "identity", random_state=0), y, nozip, None),
             ("MLP logistic 3 classes, ZipMap", MLPClassifier((16,), "logistic", random_state=0), y % 3, None, None),
             ("MLP relu, labels 1..10", MLPClassifier((16,), random_state=0), y + 1, nozip, None),
             ("LogisticRegression multinomial", LogisticRegression(max_iter=500), y, nozip, None),
             ("StandardScaler + MLP, ZipMap", make_pipeline(StandardScaler(), MLPClassifier((16,), random_state=0)),
              y, None, None),
             ("MLP relu, target opset 18", MLPClassifier((16,), random_state=0), y, nozip, 18),
             ("MLP relu, target opset 21", MLPClassifier((16,), random_state=0), y, nozip, 21)]
    for name, clf, labels, options, opset in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(x, labels)
        kwargs = {"options": {id(clf): options}} if options else {}
        if opset:
            kwargs["target_opset"] = {"": opset, "ai.onnx.ml": 3}
        model = to_onnx(clf, x[:1], **kwargs)
        path = folder(f"sklearn {name}")
        onnx.save(model, path)
        outs = [o.name for o in model.graph.output]
        yield f"skl2onnx: {name} -> {outs}", path, x[:64], np.searchsorted(clf.classes_, labels[:64]), {
            "kind": "probs", "source": lambda p, xs, f, i, clf=clf: clf.predict_proba(xs).astype(np.float32)}


if __name__ == "__main__":
    results = []
    for source in (torch_variants(), hand_variants(), sklearn_variants()):
        for name, path, x, y, keywords in source:
            record = probe(name, path, x, y, **keywords)
            results.append(record)
            print(f"{record['outcome']:>14} | {name} | {record.get('imported') or record.get('detail', '')}"[:260],
                  flush=True)
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(len(results), "variants:", counts)
