"""Edges of the baselines (tools/simulate/baselines.py) that the runs on real data do not pin
down: the unstable flag exactly at twice the best epoch, the pooled run without the proximal
term, and a local run that spikes past the devices' loss-ratio guard and recovers (found by the
mutation7-simfleet audit)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.tools.simulate import baselines
from fedge.tools.simulate.baselines import local_only, train_decayed, unstable


class _Backend:
    """A stand-in trainer: each step returns the next scripted loss and records its hyper."""

    name = "scripted"

    def __init__(self, losses=None):
        self.losses = iter(losses) if losses is not None else None
        self.hypers: list = []
        self.params: dict = {}

    def start(self, params, opt_state, anchor, correction=None):
        self.params = dict(params)

    def step(self, z, y, hyper):
        self.hypers.append(hyper)
        return next(self.losses) if self.losses is not None else 1.0

    def current(self):
        return self.params, {}

    def predict(self, params, z):
        return {"global": np.eye(2, dtype=np.float32)[np.zeros(len(z), np.int64)]}


def test_unstable_is_strictly_over_twice_the_best_epoch():
    assert not unstable((0.5, 1.0))  # exactly 2x (and 0.5 nats over): not over twice
    assert unstable((0.5, 1.0001))
    assert not unstable((0.5, 0.2, 0.4))  # 2x the best exactly, the best in the middle


def test_the_pooled_run_has_no_proximal_term():
    """FedProx's mu pulls a device towards the global model; the pooled run has none to stay near."""
    be = _Backend()
    manifest = SimpleNamespace(by_role=lambda role: [])
    z, y = np.zeros((8, 2), np.float32), np.zeros(8, np.int64)
    train_decayed(be, manifest, {}, {}, z, y, TaskHyper(epochs=3, batch_size=4, lr=0.1, mu=0.5,
                                                        divergence_factor=0.0), np.random.default_rng(0))
    assert len(be.hypers) == 6 and all(h.mu == 0.0 for h in be.hypers)


def test_a_local_run_that_spikes_past_the_task_guard_and_recovers_is_not_diverged(monkeypatch):
    """The devices' guard (divergence_factor 10) declines a task whose loss passes 10x its first;
    a baseline runs many epochs and measures what it ends at, so the same spike is no divergence."""
    script = [1.0, 1.0, 30.0, 30.0, 0.5, 0.5, 0.4, 0.4]  # 2 batches an epoch: epoch 2 spikes to 30x
    monkeypatch.setattr(baselines, "make_backend", lambda *a: _Backend(script))
    client = SimpleNamespace(client_id="d0", x_train=np.zeros((4, 2), np.float32), y_train=np.zeros(4, np.int64),
                             x_test=np.zeros((2, 2), np.float32), y_test=np.zeros(2, np.int64))
    model = SimpleNamespace(dir=None, manifest=SimpleNamespace(heads=("global",), by_role=lambda role: []),
                            embed=lambda x: x, initial=lambda role: {})
    data = SimpleNamespace(clients=(client,))
    hyper = TaskHyper(epochs=1, batch_size=2, lr=0.1, divergence_factor=10.0)
    out = local_only(model, data, hyper, epochs=4, backend="portable", seed=0)
    assert out["diverged"] == [] and out["unstable"] == [] and out["accuracy_per_device"] == {"d0": 1.0}
