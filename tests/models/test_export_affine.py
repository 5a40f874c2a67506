"""models/export.prepend_affine: the standardization a device with `[data] standardize = true`
applies in float64 (edge_runtime/kernel/features.py), as float32 ONNX nodes in front of an
exported model. Oracle: the device's own formula on the same float32 features."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from fedge.edge_runtime.kernel.errors import ConfigError  # noqa: E402
from fedge.edge_runtime.kernel.features import feature_statistics, standardize  # noqa: E402
from fedge.models.export import prepend_affine  # noqa: E402


def _identity(shape):
    """x (N, *shape) -> y, read by a node (Identity), as a backbone's first node reads its input."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *shape])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("loc, scale", [(2e4, 1e4), (1e4, 1.0), (1e5, 10.0), (0.0, 1e-4), (0.5, 0.3)])
def test_the_exported_affine_matches_the_devices_float64_formula(loc, scale):
    """A single float32 Sub of the mean left up to 4.7e-4 standardized units on features of
    mean 1e4 and std 1 (half the float32 spacing of 1e4, over a std of 1); hi + lo keeps it at
    float32 rounding."""
    rng = np.random.default_rng(0)
    x = rng.normal(loc, scale, size=(400, 2, 4)).astype(np.float32)
    x[:, 1, 3] = np.float32(loc + 3)  # constant on this device: centred only
    mean, std = feature_statistics(x[:300])
    model = _identity((8,))  # the model's input shape; the device's examples are (2, 4), reshaped alike
    prepend_affine(model, mean, std, (8,))
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": x[300:].reshape(100, 8)})[0]
    np.testing.assert_allclose(got, standardize(x[300:], mean, std).reshape(100, 8), rtol=0, atol=1e-6)


def test_features_that_do_not_fit_the_models_input_are_refused_by_name():
    mean, std = feature_statistics(np.ones((5, 6), np.float32))
    with pytest.raises(ConfigError, match="6 features per example but the model's input"):
        prepend_affine(_identity((8,)), mean, std, (8,))


def test_a_std_of_another_size_than_the_mean_is_refused_by_name():
    """A mean that fits the input beside a std that does not (a damaged record) is refused before
    any initializer is reshaped: ConfigError, not onnx's or numpy's reshape error."""
    mean = np.zeros(8)
    for std in (np.ones(6), np.ones(9)):
        with pytest.raises(ConfigError, match="its standardization cannot go first"):
            prepend_affine(_identity((8,)), mean, std, (8,))
