"""The trainable activations' numpy forward and backward (kernel/activations.py, the numpy
backend's and the graphs' oracle) against torch's autograd, and the spec field they add."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.edge_runtime.kernel.activations import ACTIVATIONS, activate, activation_backward
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.spec import LayerSpec, load_spec, mlp_spec, spec_from_dict

GRID = np.concatenate([np.linspace(-7, 7, 141), [0.0, -1e-3, 1e-3, -30.0, 30.0]])


@pytest.mark.parametrize("activation, slope", [("relu", 0.01), ("tanh", 0.01), ("sigmoid", 0.01),
                                               ("leaky_relu", 0.01), ("leaky_relu", 0.3), ("gelu", 0.01),
                                               ("none", 0.01)])
def test_forward_and_backward_match_torch_autograd(activation, slope):
    torch = pytest.importorskip("torch")
    fn = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": torch.nn.functional.gelu,
          "leaky_relu": lambda v: torch.nn.functional.leaky_relu(v, slope), "none": lambda v: v}[activation]
    x = torch.tensor(GRID, dtype=torch.float64, requires_grad=True)
    upstream = np.random.default_rng(0).normal(size=GRID.shape)
    out = fn(x)
    out.backward(torch.from_numpy(upstream))
    ours = activate(activation, GRID, slope)
    np.testing.assert_allclose(ours, out.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(activation_backward(activation, upstream, GRID, ours, slope), x.grad.numpy(),
                               rtol=1e-12, atol=1e-12)
    assert activation in ACTIVATIONS


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="gelu", negative_slope=0.2), "negative_slope is leaky_relu's"),
    (dict(activation="leaky_relu", negative_slope=1.5), r"must be in \[0, 1\]"),
    (dict(activation="leaky_relu", negative_slope=float("nan")), r"must be in \[0, 1\]"),
    (dict(activation="swish"), "not in"),
])
def test_layer_spec_refuses_bad_activation_fields(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LayerSpec(name="fc1", units=4, mode="lora", **kwargs)


def test_only_leaky_layers_carry_the_slope_so_older_model_ids_stand():
    """The dict (and so the model_id) of every spec without a leaky_relu layer is what it was
    before the field existed; a leaky layer's slope is in it and loads back."""
    for spec in (load_spec("cnn-8-lora"), mlp_spec(10, 3)):
        assert all(set(layer) == {"name", "kind", "units", "kernel", "activation", "mode"}
                   for layer in spec.to_dict()["layers"])
    spec = mlp_spec(10, 3, hidden=(6,))
    leaky = replace(spec, layers=(replace(spec.layers[0], activation="leaky_relu", negative_slope=0.25),))
    assert leaky.to_dict()["layers"][0]["negative_slope"] == 0.25
    assert spec_from_dict(leaky.to_dict()) == leaky
