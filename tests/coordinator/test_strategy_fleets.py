"""Every strategy end to end over the in-memory broker, on the toy fleet of strategy_fleet.py:
partial participation, over-selection, declines, and 8-bit top-k compression; rounds commit
and the global model learns a separable toy task. SCAFFOLD keeps c = mean_i c_i over the real
fleet; FedAvg weighs each update by its examples and SCAFFOLD takes the plain mean, checked
from the wire bytes. The server steps against references, without a fleet:
test_strategy_math.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from fedge.edge_runtime.store import DeviceStore
from tests.coordinator.fleet import Fleet
from tests.coordinator.strategy_fleet import NAMES, toy_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


# ------------------------------------------------------------------ end to end


def run_rounds(fleet: Fleet, rounds: int) -> list:
    records = []
    c = fleet.coordinator
    for _ in range(rounds):
        if c.round is None and not c.begin_round():
            fleet.clock.advance(c.config.pace_idle_s)
        fleet.drain()
        record = c.tick()
        if record is None:  # too few reports: wait for the deadline
            fleet.clock.advance(c.config.round_deadline_s + 1)
            record = c.tick()
        records.append(record)
        fleet.clock.advance(c.config.pace_declined_s + c.config.pace_jitter_s)  # everyone checks in again
        for agent in fleet.agents:
            agent.tick()  # check in again (a device that declined may be eligible now)
        fleet.drain()
    return records


def global_metrics(fleet: Fleet) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the global head over every device's test split."""
    _, manifest, runtime = fleet.model
    hits, losses = [], []
    for agent in fleet.agents:
        device = agent.runtime
        logits = device._backend(device.model(manifest.model_id), "sgd").predict(
            {**fleet.coordinator.state.params, **runtime.initial("personal")},
            runtime.embed(device.data.x_test))["global"]
        y = device.data.y_test
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        hits.extend(np.argmax(logits, axis=1) == y)
        losses.extend(-logp[np.arange(len(y)), y])
    return float(np.mean(hits)), float(np.mean(losses))


E2E = dict(clients_per_round=4, over_selection=1.5, min_reports=2, round_deadline_s=60.0,
           hyper=TaskHyper(epochs=1, batch_size=10, lr=0.1),
           compression=CompressionSpec(quant_bits=8, topk_fraction=0.5))


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_learns_with_partial_participation_declines_and_compression(model, tmp_path, name):
    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy=name, **E2E), decline_p=0.15)
    acc0, loss0 = global_metrics(fleet)
    records = run_rounds(fleet, 16)
    acc, loss = global_metrics(fleet)
    committed = [r for r in records if r.committed]
    assert len(committed) >= 12, [r.why for r in records]
    assert all(r.reports <= 4 for r in committed)  # partial participation: 4 of 8 at most
    assert sum(sum(1 for v in r.declines.values()) for r in records) > 0  # some declined
    assert sum(r.bytes_up for r in committed) < sum(r.bytes_up_dense for r in committed)  # compressed
    # Default server learning rates throughout; ~0.28 / 1.43 at the start.
    assert loss < 0.5 * loss0 and acc >= 0.8, (name, acc0, acc, loss0, loss)
    if name == "scaffold":
        assert any(u.control for u in fleet.updates()) and all(u.control for u in fleet.updates())
        assert np.any(fleet.coordinator.state.extra["control"]["head_global.weight"] != 0)


def test_scaffold_keeps_c_the_mean_of_the_devices_ci(model, tmp_path):
    """c = (1/N) sum_i c_i, with N every known device, through over-selection (late uploads are
    rejected as stale and undone on the device), declines, and lossy compression."""
    # DeviceAgent passes every Ack to DeviceRuntime.on_ack, which undoes a rejected upload's c_i move.
    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy="scaffold", **E2E), decline_p=0.15)
    records = run_rounds(fleet, 8)
    assert fleet.coordinator.rejections.get("stale_round", 0) > 0  # some uploads did come late
    assert sum(r.committed for r in records) >= 6
    _, manifest, runtime = fleet.model
    c = fleet.coordinator.state.extra["control"]
    total = {k: np.zeros(v.shape, np.float64) for k, v in c.items()}
    for agent in fleet.agents:
        c_i = DeviceStore(agent.runtime.state_root / agent.device_id, manifest.model_id).load_control()
        for k in total:
            total[k] += 0 if c_i is None else c_i[k]
    assert np.any(c["head_global.weight"] != 0)
    for k in c:
        np.testing.assert_allclose(c[k], total[k] / len(fleet.agents), atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_weighs_each_update_by_its_examples_on_an_unequal_fleet(model, tmp_path, name):
    """One round of real devices holding 16 to 72 examples: the new model is the old one plus
    sum_i n_i delta_i / sum_i n_i over the accepted updates (McMahan et al.), from the wire bytes."""
    from tests.coordinator.fleet import assert_params, copy_params, fedavg_oracle

    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy=name, aggregator="mean", **E2E))  # the oracle's mean
    c = fleet.coordinator
    old = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    reported = list(c.round.machine.reported)
    record = c.tick()
    assert record is not None and record.committed and record.reports == len(reported) >= 2
    accepted = [u for u in fleet.updates() if u.round_id == record.round_id and u.device_id in reported]
    assert len(accepted) == len(reported)
    assert len({u.num_examples for u in accepted}) > 1  # unequal, or the weights would not matter
    assert_params(c.state.params, fedavg_oracle(old, accepted))


def test_scaffold_takes_the_plain_mean_of_the_deltas_on_an_unequal_fleet(model, tmp_path):
    """SCAFFOLD's server step as the paper writes it, from the wire bytes of two rounds of real
    devices holding 16 to 72 examples (weighting left at its default, "examples"):
    x <- x + mean_i Δy_i and c <- c + (|S| / N) mean_i Δc_i, both plain means. The deltas were
    weighted by examples once, while c stays the plain mean of the c_i: the corrections c - c_i
    then no longer cancel in the server step, and a pretrained fleet on Dirichlet 0.1 collapsed."""
    from tests.coordinator.fleet import assert_params, copy_params

    cfg = CoordinatorConfig(strategy="scaffold", aggregator="mean", **{**E2E, "over_selection": 1.0})
    assert cfg.weighting == "examples"
    fleet = toy_fleet(model, tmp_path, cfg)
    c = fleet.coordinator
    for _ in range(2):  # the second round trains with c != 0
        x, control = copy_params(c.state.params), copy_params(c.state.extra["control"])
        assert c.begin_round()
        fleet.drain()
        record = c.tick()
        assert record is not None and record.committed
        accepted = [u for u in fleet.updates() if u.round_id == record.round_id]
        assert len(accepted) == record.reports >= 2 and len({u.num_examples for u in accepted}) > 1
        deltas = [decompress_update(decode_tensors(u.payload)) for u in accepted]
        dcs = [decompress_update(decode_tensors(u.control)) for u in accepted]
        assert_params(c.state.params, {k: x[k] + np.mean([d[k] for d in deltas], axis=0, dtype=np.float64)
                                       for k in x})
        share = len(accepted) / len(fleet.agents)
        assert_params(c.state.extra["control"],
                      {k: control[k] + share * np.mean([d[k] for d in dcs], axis=0, dtype=np.float64)
                       for k in control})
        fleet.clock.advance(c.config.pace_declined_s + c.config.pace_jitter_s)  # everyone checks in again
        for agent in fleet.agents:
            agent.tick()
        fleet.drain()
