"""`fedge device export`: after a real training task, the device's personalized model (backbone,
LoRA merged, personal head) as one ONNX file that plain onnxruntime runs, in a Python that
cannot import fedge, with the runtime's own evaluation as the oracle (to 1e-5)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from fedge.edge_runtime.device import DeviceRuntime, LocalData  # noqa: E402
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask, Update  # noqa: E402
from fedge.edge_runtime.kernel.update_codec import encode_dense  # noqa: E402
from fedge.edge_runtime.store import DeviceStore  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.spec import mlp_spec  # noqa: E402
from fedge.tools.cli import main  # noqa: E402
from tests.models.test_onnx_import import _cnn  # noqa: E402

# Runs in `python -I` with every fedge import refused: only onnxruntime and numpy.
STANDALONE = textwrap.dedent("""
    import sys, importlib.abc
    class NoFedge(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "fedge":
                raise ImportError("fedge must not be needed to run an exported model")
    sys.meta_path.insert(0, NoFedge())
    import numpy as np, onnxruntime as ort
    model, data, out = sys.argv[1:4]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"x": np.load(data)})[0]
    assert not any(m.split(".")[0] == "fedge" for m in sys.modules)
    np.save(out, logits)
""")


def _spec(kind, tmp_path):
    if kind == "imported-cnn":
        onnx.save(_cnn(), tmp_path / "cnn.onnx")
        return import_spec(ImportOptions(str(tmp_path / "cnn.onnx"), roles={"fc1": "lora"}, num_classes=3,
                                         lora_rank=2)), (2, 6, 6)
    if kind == "frozen-then-lora":  # a backbone fedge built, then a LoRA layer
        return mlp_spec(10, 3, hidden=(16, 8), modes=("frozen", "lora"), lora_rank=2), (10,)
    if kind == "tanh-sigmoid":  # what an imported tanh or logistic MLP gives
        spec = mlp_spec(10, 3, hidden=(16, 8), modes=("lora", "personal"), lora_rank=2)
        layers = tuple(replace(layer, activation=act) for layer, act in zip(spec.layers, ("tanh", "sigmoid")))
        return replace(spec, layers=layers), (10,)
    if kind == "gelu-leaky":  # what an imported torch MLP with nn.GELU() and nn.LeakyReLU(0.2) gives
        spec = mlp_spec(10, 3, hidden=(16, 8), modes=("lora", "personal"), lora_rank=2)
        layers = (replace(spec.layers[0], activation="gelu"),
                  replace(spec.layers[1], activation="leaky_relu", negative_slope=0.2))
        return replace(spec, layers=layers), (10,)
    return mlp_spec(10, 3, hidden=(8,), modes=("personal",)), (10,)  # no backbone at all


@pytest.mark.parametrize("kind", ["imported-cnn", "frozen-then-lora", "tanh-sigmoid", "gelu-leaky", "personal-layer"])
def test_exported_model_matches_the_runtime(kind, tmp_path):
    spec, shape = _spec(kind, tmp_path)
    state = tmp_path / "state"
    probe = build_artifacts(spec, tmp_path / "probe", ort_training=False)
    art = state / "devA" / "artifacts" / probe.model_id
    manifest = build_artifacts(spec, art, ort_training=False)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, *shape)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    device = DeviceRuntime("devA", LocalData(x[:48], y[:48], x[48:], y[48:]), {manifest.model_id: art}, state, seed=1)
    shared = {k: v + 0.05 * rng.normal(size=v.shape).astype(np.float32)
              for k, v in device.model(manifest.model_id).initial("shared").items()}
    task = TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=manifest.model_id, model_version=0,
                     params=encode_dense(shared), hyper=TaskHyper(epochs=3, batch_size=8, lr=0.1, optimizer="sgd"),
                     compression=CompressionSpec(), seed=9)
    assert isinstance(device.handle_task(task), Update)  # trained: the export below reads what it kept
    store = DeviceStore(state / "devA", manifest.model_id)
    personal = store.load_personal()
    assert set(store.load_global()) == set(shared)
    if kind != "personal-layer":
        assert any("lora_b" in k for k in shared) and np.abs(shared[next(k for k in shared if "lora_b" in k)]).max() > 0

    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{state}"\n[data]\nnpz = "unused.npz"\n')
    out = tmp_path / "personalized.onnx"
    umask = os.umask(0o022)  # the shell's usual one, which gave the export 0644
    try:
        assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # it holds the device's personal params

    np.save(tmp_path / "x.npy", x[48:])
    subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(out), str(tmp_path / "x.npy"),
                    str(tmp_path / "logits.npy")],
                   check=True, cwd=tmp_path, timeout=120)
    got = np.load(tmp_path / "logits.npy")

    model = device.model(manifest.model_id)
    z = model.embed(x[48:])
    want = device._backend(model, "sgd").predict({**shared, **personal}, z)["personal"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    evaluation = device.evaluate(manifest.model_id, shared)
    assert evaluation.accuracy_personal == pytest.approx(float((got.argmax(1) == y[48:]).mean()))
    assert [o.name for o in onnx.load(out).graph.output] == ["logits"]
    # A re-export replaces its own file (a new 0600 file, whatever the old one's mode); someone else's
    # file at --out is kept, refused before any work, and so is its mode.
    out.chmod(0o644)
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    theirs, notes = tmp_path / "theirs.onnx", tmp_path / "notes.txt"
    x_in, y_out = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy")
    their_graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x_in], [y_out])
    their_model = onnx.helper.make_model(their_graph, producer_name="someone").SerializeToString()
    theirs.write_bytes(their_model)
    notes.write_text("mine")
    theirs.chmod(0o644)
    for path in (theirs, notes):
        assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(path)]) == 2
    assert theirs.read_bytes() == their_model and notes.read_text() == "mine"
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o644


def test_export_without_a_trained_model_says_why(tmp_path, capsys):
    spec, _ = _spec("personal-layer", tmp_path)
    probe = build_artifacts(spec, tmp_path / "probe", ort_training=False)
    build_artifacts(spec, tmp_path / "state" / "devA" / "artifacts" / probe.model_id, ort_training=False)
    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{tmp_path / "state"}"\n'
                                       '[data]\nnpz = "x.npz"\n')
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "has not trained model" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["uint8", "float32", "missing"])
def test_export_says_which_scaling_its_input_takes(dtype, tmp_path, capsys):
    """A device reads uint8 features as x / 255 (examples.check_split) and trains on that; the
    export said only `x -> logits`, so raw 0..255 pixels fed to it were read 255 times too bright.
    The export now states the scaling (metadata `fedge.input`, doc_string, its printed line); the
    oracle for the uint8 note: the device's own logits on what it holds, against the export's on x / 255."""
    ort = pytest.importorskip("onnxruntime")
    from fedge.edge_runtime.device_config import load_local_data

    spec, shape = _spec("personal-layer", tmp_path)
    state = tmp_path / "state"
    probe = build_artifacts(spec, tmp_path / "probe", ort_training=False)
    art = state / "devA" / "artifacts" / probe.model_id
    manifest = build_artifacts(spec, art, ort_training=False)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(40, *shape)).astype(dtype if dtype != "missing" else "uint8")
    y = rng.integers(0, 3, 40)
    np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    data = load_local_data(tmp_path / "d.npz")
    device = DeviceRuntime("devA", data, {manifest.model_id: art}, state, seed=1)
    shared = device.model(manifest.model_id).initial("shared")
    task = TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=manifest.model_id, model_version=0,
                     params=encode_dense(shared), hyper=TaskHyper(epochs=2, batch_size=8, lr=0.05, optimizer="sgd"),
                     compression=CompressionSpec(), seed=9)
    assert isinstance(device.handle_task(task), Update)  # trained: the export below reads what it kept
    if dtype == "missing":
        (tmp_path / "d.npz").unlink()  # exported where the data file is not
    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{state}"\n[data]\nnpz = "{tmp_path}/d.npz"\n')
    out = tmp_path / "m.onnx"
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    note = {p.key: p.value for p in onnx.load(out).metadata_props}["fedge.input"]
    assert note in capsys.readouterr().out and note in onnx.load(out).doc_string
    if dtype == "float32":
        assert note == "x as float32: this device's float32 data as saved, unscaled"
        return
    assert "uint8 data divided by 255" in note
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x[30:].astype(np.float32) / np.float32(255)})[0]
    store, model = DeviceStore(state / "devA", manifest.model_id), device.model(manifest.model_id)
    want = device._backend(model, "sgd").predict({**store.load_global(), **store.load_personal()},
                                                  model.embed(data.x_test))["personal"]  # what the device computes
    np.testing.assert_allclose(logits, want, atol=1e-5)


def _standardizing_device_trained(tmp_path, statistics=""):
    """A device built from its config ([data] standardize = true, features of mean 2e4 and std
    1e4; `statistics`: its [data] statistics file) that trained one task: (its raw x, the device,
    its own logits on its x_test as it holds it)."""
    from fedge.edge_runtime.device_config import load_device_config
    from fedge.edge_runtime.probes import FakeProbe
    from fedge.edge_runtime.run import build_device

    spec, shape = _spec("frozen-then-lora", tmp_path)  # a backbone: the affine goes in front of it
    state = tmp_path / "state"
    probe = build_artifacts(spec, tmp_path / "probe", ort_training=False)
    art = state / "devA" / "artifacts" / probe.model_id
    manifest = build_artifacts(spec, art, ort_training=False)
    rng = np.random.default_rng(4)
    x = rng.normal(2e4, 1e4, size=(60, *shape)).astype(np.float32)  # blobs x 1e4 + 2e4: diverge unstandardized
    y = rng.integers(0, 3, 60)
    np.savez(tmp_path / "d.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{state}"\n'
                                       f'[data]\nnpz = "{tmp_path / "d.npz"}"\nstandardize = true\n'
                                       + (f'statistics = "{statistics}"\n' if statistics else ''))
    # A healthy FakeProbe: the system's probe declined the task as cpu_busy when CI ran this beside
    # the other tests (not eligible: no global model kept, and the export refused).
    device = build_device(load_device_config(tmp_path / "dev.toml"), probe=FakeProbe())[0].agent.runtime
    assert np.abs(device.data.x_test).max() < 10  # it trains on standardized features
    shared = device.model(manifest.model_id).initial("shared")
    task = TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=manifest.model_id, model_version=0,
                     params=encode_dense(shared), hyper=TaskHyper(epochs=3, batch_size=8, lr=0.1, optimizer="sgd"),
                     compression=CompressionSpec(), seed=9)
    assert isinstance(device.handle_task(task), Update)  # trained, not declined
    store, model = DeviceStore(state / "devA", manifest.model_id), device.model(manifest.model_id)

    def logits():
        return device._backend(model, "sgd").predict({**store.load_global(), **store.load_personal()},
                                                     model.embed(device.data.x_test))["personal"]

    return x, device, logits


def test_a_standardizing_device_exports_a_model_that_takes_raw_features(tmp_path, capsys):
    """With [data] standardize = true the device trains on (x - mean) / std of its own training
    statistics; its export put nothing in front, so raw features fed to it (what the device holds
    before standardizing, and what the note promised) were read unstandardized. The export now
    starts with that Sub and Div: the oracle is the device's own logits on its standardized
    x_test, against stock onnxruntime's on the raw x_test (test_exported_model_matches_the_runtime
    runs exports in a Python that refuses fedge)."""
    ort = pytest.importorskip("onnxruntime")
    x, device, want = _standardizing_device_trained(tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x[48:]})[0]  # raw
    want = want()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want).max() > 0.1  # logits that depend on the input, not a model that outputs ~0
    assert (got.argmax(1) == want.argmax(1)).all()
    note = {p.key: p.value for p in onnx.load(out).metadata_props}["fedge.input"]
    assert "not standardized: the model itself standardizes it" in note
    assert note in capsys.readouterr().out and note in onnx.load(out).doc_string
    assert [n.op_type for n in onnx.load(out).graph.node[:3]] == ["Sub", "Sub", "Div"]

    (tmp_path / "d.npz").unlink()  # the statistics the device recorded: no data file needed
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    (tmp_path / "state" / "devA" / "standardization.npz").unlink()  # neither: a named refusal
    capsys.readouterr()
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 2
    assert "[data] standardize = true" in capsys.readouterr().err


def test_the_export_standardizes_as_the_device_does_after_its_data_file_changed(tmp_path, capsys):
    """The export read the statistics from the data file as it was at export: a file replaced
    since the device loaded it (no SIGHUP yet, or a device that is stopped) gave the model the new
    file's mean and std while the device trained and evaluates with the old, and the note still
    said "this device's training mean and std". The device now records what it applies at start
    and at each SIGHUP reload (standardization.npz beside its state); the export takes that."""
    ort = pytest.importorskip("onnxruntime")
    x, device, want = _standardizing_device_trained(tmp_path)
    rng = np.random.default_rng(8)
    x_new = rng.normal(-3e3, 50.0, size=(20, 10)).astype(np.float32)  # another scale, not yet loaded
    np.savez(tmp_path / "d.npz", x_train=x_new[:15], y_train=rng.integers(0, 3, 15), x_test=x_new[15:],
             y_test=rng.integers(0, 3, 5))
    out = tmp_path / "m.onnx"
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x[48:]})[0]
    np.testing.assert_allclose(got, want(), atol=1e-5)
    note = {p.key: p.value for p in onnx.load(out).metadata_props}["fedge.input"]
    assert "recorded at its last start or SIGHUP reload" in note and note in capsys.readouterr().out
    (tmp_path / "state" / "devA" / "standardization.npz").unlink()  # a device that has recorded none: the file's
    assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
    note = {p.key: p.value for p in onnx.load(out).metadata_props}["fedge.input"]
    assert f"the training mean and std of {tmp_path / 'd.npz'} as it is at export (the device has recorded none" in note


def test_a_device_on_fleet_statistics_exports_a_model_that_standardizes_with_them(tmp_path, capsys):
    """[data] statistics: the device trains on (x - mean) / std with the fleet's mean and std from
    the file, not its own; the export puts exactly those in front of its model. Oracle: the
    device's own logits on its x_test as it holds it, against stock onnxruntime's on the raw x_test."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from fedge.tools.fleet_moments import STATISTICS_BY, write_npz

    shape = (10,)  # frozen-then-lora's input (the helper's _spec)
    rng = np.random.default_rng(11)
    mean, std = rng.normal(1.5e4, 3e3, shape), rng.uniform(5e3, 2e4, shape)  # the fleet's: not this device's
    write_npz(tmp_path / "fleet.npz", STATISTICS_BY, mean=mean, std=std)
    x, device, want = _standardizing_device_trained(tmp_path, tmp_path / "fleet.npz")
    np.testing.assert_allclose(device.data.x_test, (x[48:].astype(np.float64) - mean) / std, rtol=1e-6, atol=1e-6)
    out = tmp_path / "m.onnx"
    for recorded in (True, False):  # what the device recorded at start; else the file as it is at export
        if not recorded:
            (tmp_path / "state" / "devA" / "standardization.npz").unlink()
        assert main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(out)]) == 0
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"x": x[48:]})[0]
        np.testing.assert_allclose(got, want(), atol=1e-5)
        model = onnx.load(out)
        consts = [numpy_helper.to_array(t) for t in model.graph.initializer]
        assert any(c.shape == mean.shape and np.array_equal(c, mean.astype(np.float32)) for c in consts)
        assert any(c.shape == std.shape and np.array_equal(c, std.astype(np.float32)) for c in consts)
        note = {p.key: p.value for p in model.metadata_props}["fedge.input"]
        assert f"the fleet's mean and std ([data] statistics {tmp_path / 'fleet.npz'})" in note
        assert ("recorded at its last start" in note) == recorded
        assert note in capsys.readouterr().out
