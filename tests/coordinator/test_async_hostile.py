"""Async updates from devices fedge did not write, spoken in the wire schema directly: a model
version from the future, another model, another device's task or identity, and an update for a
task the device was given before its current one. Each is refused by name (rejection counter,
metric, the device's Ack), none enters the buffer, the claimant's slot is freed when its own
task was answered, and the honest updates flush to a plain loop of FedBuff's step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import assert_params, copy_params, random_delta
from tests.coordinator.test_async_server import _fleet, _send, fedbuff_oracle
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_claims_no_task_of_the_device_backs_are_refused_by_name_and_buffer_nothing(model, tmp_path):
    fleet, devs = _fleet(model, tmp_path, 4, buffer_size=2, max_staleness=5)
    c = fleet.coordinator
    rng = np.random.default_rng(11)
    future, other, thief, mask = devs

    def send(device, update):
        device.send(encode_message(update))
        fleet.drain()
        return device.acks()[-1]

    assert send(future, future.update(random_delta(c.shapes, rng), base_version=1000)) == (False, "wrong_model")
    assert send(other, other.update(random_delta(c.shapes, rng), model_id="another-model")) == (False, "wrong_model")
    stolen = dataclasses.replace(thief.update(random_delta(c.shapes, rng)), task_id=mask.task().task_id)
    assert send(thief, stolen) == (False, "stale_round")
    # another device's identity on its own topic: no Ack goes to either
    mask.send(encode_message(dataclasses.replace(mask.update(random_delta(c.shapes, rng)), device_id=thief.id)))
    fleet.drain()
    assert mask.acks() == [] and len(thief.acks()) == 1
    assert c.rejections == {"wrong_model": 2, "stale_round": 2}
    for reason, n in c.rejections.items():
        assert c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": reason}) == n
    assert c.machine.buffered == 0 and c.state.version == 0
    # the two that answered their own task (wrongly) freed their slots; the other two still train
    assert [c.machine.flight(d.id) is not None for d in devs] == [False, False, True, True]

    v0 = copy_params(c.state.params)
    honest = [_send(fleet, d, random_delta(c.shapes, rng), "h1") for d in (thief, mask)]
    assert c.state.version == 1
    assert_params(c.state.params, fedbuff_oracle(v0, honest, [0, 0]))

    # An update for the task before its current one, under a new update id: not a duplicate, stale
    c.tick()
    fleet.drain()
    assert c.machine.flight(thief.id).task_id != honest[0].task_id
    assert send(thief, dataclasses.replace(honest[0], update_id="again")) == (False, "stale_round")
    assert c.machine.flight(thief.id) is not None and c.machine.buffered == 0 and c.rejections["stale_round"] == 3
