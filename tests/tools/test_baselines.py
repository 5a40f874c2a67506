"""The local-only baseline survives a device whose training diverges: that device keeps the
model it started from (as a declining device does) and is named, instead of the whole
simulation ending in a Diverged traceback after every round has run."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from fedge.tools.datasets import build_federated
from fedge.tools.simulate.baselines import local_only


def test_a_diverging_device_keeps_its_start_and_is_named(tmp_path):
    data = build_federated("digits", 4, "iid", 0)
    # float32 sums overflow on these inputs: its loss is not finite
    wild = dataclasses.replace(data.clients[1], x_train=data.clients[1].x_train * 3e38)
    data = dataclasses.replace(data, clients=(data.clients[0], wild, *data.clients[2:]))
    spec = mlp_spec(data.input_shape[0], data.num_classes, hidden=(16,), modes=("lora",))
    build_artifacts(spec, tmp_path / "m", ort_training=False)
    model = ModelRuntime(tmp_path / "m")
    hyper = TaskHyper(epochs=1, batch_size=20, lr=0.05)
    out = local_only(model, data, hyper, epochs=30, backend="portable", seed=0)
    assert out["diverged"] == [wild.client_id]
    assert set(out["accuracy_per_device"]) == {c.client_id for c in data.clients}
    others = [v for k, v in out["accuracy_per_device"].items() if k != wild.client_id]
    assert np.mean(others) > 0.5  # the honest devices trained
