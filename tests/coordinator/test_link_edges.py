"""The coordinator's side of the broker link at its edges (mutation6-transport): a task sent
again exactly task_resend_s later, retained model parts of an earlier, larger model deleted,
and what a reconnect sends again."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.artifacts import UnknownTask
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.fetches import serve_fetch
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.outbound import Outbound
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import FetchRequest, TrainTask, model_part_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model

PART = 256


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _inline_tasks(device: ManualDevice) -> int:
    device.receive()
    return len([m for m in device.inbox if isinstance(m, TrainTask) and m.params])


def test_an_inline_task_goes_again_exactly_task_resend_s_after_the_last(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(), model_part_bytes=PART, task_resend_s=30.0)
    pi = ManualDevice(fleet, "pi", 5)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    task = pi.task()
    ask = encode_message(FetchRequest("pi", task.model_id, task_id=task.task_id))
    for step, want in ((0.0, 1), (29.5, 1), (0.5, 2)):  # at 0 s, 29.5 s (refused) and 30 s after the first
        fleet.clock.advance(step)
        pi.send(ask, channel="fetch")
        fleet.drain()
        assert _inline_tasks(pi) == want, step
    assert fleet.coordinator.rejections["rate_limited"] == 1


def _round_with(parts: int) -> SimpleNamespace:
    """What Outbound.model reads of an OpenRound."""
    return SimpleNamespace(model_parts=tuple(b"part%d" % i for i in range(parts)), bytes_down=0,
                           round_model_sha256="ab" * 32, ctx=SimpleNamespace(round_id=1))


def test_a_smaller_models_round_deletes_the_larger_ones_extra_parts():
    broker = InMemoryBroker()
    out = Outbound(broker.connect("coordinator"), CoordinatorMetrics(), CoordinatorConfig(), "tiny", "cd" * 32, "s")
    for parts in (4, 2, 3):
        out.model(_round_with(parts))
        retained = sorted(t for t in broker._retained if t.startswith("fedge/v1/model/"))  # b"" deletes one
        assert retained == [model_part_topic(i) for i in range(parts)], parts


def test_an_inline_ask_is_refused_once_the_device_reported_and_always_in_a_secure_round(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(), model_part_bytes=PART, clients_per_round=2)
    pi, pj = ManualDevice(fleet, "pi", 5), ManualDevice(fleet, "pj", 5)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    task, rnd, c = pj.task(), fleet.coordinator.round, fleet.coordinator
    ask = FetchRequest("pj", task.model_id, task_id=task.task_id)
    refused = serve_fetch(ask, rnd, None, c.outbound, c.metrics, fleet.clock.now(), secure=True)
    assert isinstance(refused, UnknownTask) and "secure round" in str(refused) and _inline_tasks(pj) == 0
    shapes = {k: v.shape for k, v in c.state.params.items()}
    pi.send(encode_message(pi.update(random_delta(shapes, np.random.default_rng(0)))))
    fleet.drain()
    assert pi.acks() == [(True, "")] and not rnd.machine.expects("pi")
    pi.send(encode_message(FetchRequest("pi", task.model_id, task_id=pi.task().task_id)), channel="fetch")
    fleet.drain()
    assert c.rejections["unknown_task"] == 1 and _inline_tasks(pi) == 0


def test_a_reconnect_puts_back_the_model_parts_a_broker_without_persistence_forgot(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(), model_part_bytes=PART)
    ManualDevice(fleet, "pi", 5)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    parts = fleet.retained_topics("fedge/v1/model/")
    assert parts == [model_part_topic(i) for i in range(len(fleet.coordinator.round.model_parts))] and len(parts) > 1
    for topic in parts:
        fleet.spy.publish(topic, b"", retain=True)  # the broker restarted with an empty store
    assert fleet.retained_topics("fedge/v1/model/") == []
    fleet.coordinator.on_reconnect()
    assert fleet.retained_topics("fedge/v1/model/") == parts
