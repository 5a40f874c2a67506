"""A hostile external-data entry in an imported ONNX file (models/onnx_source.py): a location
outside the model's folder is refused by name and never read; one that is no path (a NUL byte,
a symlink loop, a name too long) or no regular file (a FIFO) is refused by name, where it was a
traceback or a read that never ended."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.kernel.errors import ConfigError  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402

RNG = np.random.default_rng(8)
W1 = RNG.normal(size=(4, 5)).astype(np.float32)


def _save(folder: Path, location: str) -> Path:
    """x (N, 4) -> MatMul w1 (5) -> Relu -> MatMul (3), w1's data in `location`."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")]
    w1, w2 = numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(np.ones((5, 3), np.float32), "w2")
    w1.ClearField("raw_data")
    w1.data_location = TensorProto.EXTERNAL
    w1.external_data.add(key="location", value=location)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    path = folder / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def test_the_oracle_a_data_file_beside_the_model_imports(tmp_path):
    (tmp_path / "w.data").write_bytes(W1.tobytes())
    assert import_spec(ImportOptions(str(_save(tmp_path, "w.data")))).onnx_cut == "x"


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_a_location_outside_the_models_folder_is_refused_and_never_read(tmp_path, monkeypatch, where):
    """The outside file holds exactly the bytes w1 needs: only the location check stands between it and the import."""
    (tmp_path / "model").mkdir()
    outside = tmp_path / "secret.data"
    outside.write_bytes(W1.tobytes())
    location = {"absolute": str(outside), "dotdot": "../secret.data", "symlink": "w.data"}[where]
    if where == "symlink":
        (tmp_path / "model" / "w.data").symlink_to(outside)
    path = _save(tmp_path / "model", location)
    read = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.resolve()) or original(self))
    with pytest.raises(OnnxImportError, match=rf"tensor 'w1' keeps its data in '{location}', which is not a file in "
                                              "the model's folder"):
        import_spec(ImportOptions(str(path)))
    assert outside not in read


@pytest.mark.parametrize("location", ["a\0b", "loop", "x" * 4096])
def test_a_location_that_is_no_path_is_refused_by_name(tmp_path, location):
    """A NUL byte was a ValueError, a symlink loop a RuntimeError: tracebacks."""
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OnnxImportError, match="which is no path fedge can follow"):
        import_spec(ImportOptions(str(_save(tmp_path, location))))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_the_data_file_is_refused_not_read(tmp_path):
    """The read of a FIFO waited for a writer forever. Without the check, this writer ends that
    read with 8 bytes (and the import fails as truncated, not as here)."""
    fifo = tmp_path / "w.data"
    os.mkfifo(fifo)

    def feed() -> None:
        with contextlib.suppress(OSError), open(fifo, "wb") as f:
            f.write(b"\0" * 8)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(OnnxImportError, match="keeps its data in 'w.data', which is not a regular file"):
        import_spec(ImportOptions(str(_save(tmp_path, "w.data"))))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer's open returns
    writer.join()
    os.close(reader)


def test_a_model_path_with_a_nul_byte_is_refused_by_name():
    """A spec file's `onnx = "a\\u0000b"` reached Path.read_bytes: a ValueError."""
    with pytest.raises(ConfigError, match="a NUL byte in its path"):
        import_spec(ImportOptions("a\0b.onnx"))


def _external(tensor: onnx.TensorProto, location: str) -> onnx.TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def _save_with_constant(folder: Path, where: str) -> Path:
    """x (N, 4) -> MatMul (a Constant's 4 x 5, its data in w.data) -> Relu -> MatMul (3). where:
    "typed FLOAT": the Constant's `value` attribute says FLOAT but holds the tensor;
    "function": the Constant sits in a local function the graph calls."""
    value = _external(numpy_helper.from_array(np.zeros((4, 5), np.float32), "c"), "w.data")
    const = helper.make_node("Constant", [], ["w1"], name="const")
    attr = const.attribute.add()
    attr.name = "value"
    attr.t.CopyFrom(value)
    attr.type, attr.f = (onnx.AttributeProto.FLOAT, 1.0) if where == "typed FLOAT" else (onnx.AttributeProto.TENSOR, 0)
    functions = []
    if where == "function":
        body = [const, helper.make_node("Identity", ["w1"], ["w"])]
        functions = [helper.make_function("local", "Weight", [], ["w"], body, [helper.make_opsetid("", 13)])]
        const = helper.make_node("Weight", [], ["w1"], domain="local", name="weight")
    nodes = [const, helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"), helper.make_node("MatMul", ["a", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((5, 3), np.float32), "w2")])
    model = helper.make_model(graph, functions=functions,
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("local", 1)])
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    return folder / "m.onnx"


@pytest.mark.parametrize("where", ["typed FLOAT", "function"])
def test_every_tensor_with_external_data_is_read_from_the_models_folder_only(tmp_path, monkeypatch, where):
    """Such a tensor went past the folder check, and onnx read it from the working directory:
    here a file of 7s, which the import once took as the layer's pretrained weights."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "w.data").write_bytes(np.full((4, 5), 7.0, np.float32).tobytes())
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "model").mkdir()
    with pytest.raises(OnnxImportError, match=r"tensor 'c' keeps its data in 'w.data', which cannot be read"):
        import_spec(ImportOptions(str(_save_with_constant(tmp_path / "model", where))))
