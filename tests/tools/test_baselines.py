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


class _ScriptedBackend:
    """A stand-in trainer whose step returns the next scripted loss (unit test only)."""

    name = "scripted"

    def __init__(self, losses):
        self.losses = iter(losses)
        self.params: dict = {}

    def start(self, params, opt_state, anchor, correction=None):
        self.params = dict(params)

    def step(self, z, y, hyper):
        return next(self.losses)

    def current(self):
        return self.params, {}


def test_epoch_losses_are_each_epochs_mean_and_an_unrecovered_spike_is_unstable():
    """train_locally's epoch_losses against a plain loop over the scripted batch losses; the
    baseline's instability flag against its definition (last epoch over 2x and 0.1 nats over
    the best), on a run that spikes and recovers (stable) and one that does not."""
    from types import SimpleNamespace

    from fedge.edge_runtime.local_training import train_locally
    from fedge.tools.simulate.baselines import unstable

    rng = np.random.default_rng(3)
    z, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    manifest = SimpleNamespace(by_role=lambda role: [])
    hyper = TaskHyper(epochs=4, batch_size=4, lr=0.1, divergence_factor=0.0)  # 3 batches an epoch
    for script, wobbly in (([1.0, 0.9, 0.8, 0.5, 0.4, 0.3, 9.0, 30.0, 2.0, 0.1, 0.05, 0.04], False),  # recovered
                           ([1.0, 0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 2.0, 3.0, 4.0], True)):
        res = train_locally(_ScriptedBackend(script), manifest, {}, {}, None, z, y, hyper, rng)
        expected = [float(np.mean(script[i:i + 3])) for i in range(0, 12, 3)]
        np.testing.assert_allclose(res.epoch_losses, expected)
        assert unstable(res.epoch_losses) == wobbly
    assert unstable((1.0, 0.1, 0.5)) and not unstable((1.0, 0.1, 0.15)) and not unstable((0.01, 0.001, 0.05))
    assert not unstable(())
