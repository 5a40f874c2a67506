"""The round's model goes out once, as retained ModelParts, and tasks name it by hash.

Checks: training is bit-identical to params-inline tasks while the coordinator publishes a
fraction of the bytes; devices listen to the parts only while they wait; a device that cannot
assemble the model (parts lost by the broker, a corrupt part) gets its task inline; one that
gets neither declines; an inline request for a task that is not open is refused by name."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, PayloadTooLarge
from fedge.edge_runtime.kernel.protocol import FetchRequest, ModelPart, TrainTask, model_part_topic
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model

SIZES = (10, 20, 35)
PART = 256  # bytes: the tiny model's round model then spans several parts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _round(fleet) -> None:
    assert fleet.coordinator.begin_round()
    fleet.drain()


def _parts(fleet) -> list[ModelPart]:
    return [m for m in fleet.wire if isinstance(m, ModelPart)]


def _retained_parts(fleet) -> list[str]:
    return fleet.retained_topics("fedge/v1/model/")


def test_published_once_trains_exactly_like_inline_tasks_for_fewer_bytes(model, tmp_path):
    by_ref = make_fleet(model, tmp_path / "ref", sizes=SIZES, model_part_bytes=PART)
    inline = make_fleet(model, tmp_path / "inline", sizes=SIZES, model_part_bytes=0)
    for fleet in (by_ref, inline):
        for _ in range(2):
            _round(fleet)
            assert fleet.coordinator.tick().committed
    for name, value in inline.coordinator.state.params.items():
        np.testing.assert_array_equal(by_ref.coordinator.state.params[name], value, err_msg=name)

    parts = _parts(by_ref)
    per_round = parts[0].count
    assert per_round > 1 and len(parts) == 2 * per_round  # once per round, not once per device
    assert all(not t.params and t.round_model_sha256 for t in by_ref.tasks())
    assert all(t.params and not t.round_model_sha256 for t in inline.tasks())
    params_bytes = len(inline.tasks()[0].params)
    sent_by_ref = by_ref.broker.stats("coordinator").bytes_published
    sent_inline = inline.broker.stats("coordinator").bytes_published
    # Inline: each of 3 tasks carries the params; by reference: the parts carry them once.
    assert sent_inline - sent_by_ref > 1.5 * params_bytes, (sent_inline, sent_by_ref, params_bytes)
    assert len(_retained_parts(by_ref)) == per_round


def test_devices_hear_the_parts_only_while_a_task_waits_for_them(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART)
    _round(fleet)
    assert fleet.coordinator.tick().committed
    assert all(not a.delivery.parts_subscribed and not a.delivery.model_waits.listening for a in fleet.agents)
    before = [fleet.broker.stats(a.device_id).messages_received for a in fleet.agents]
    fleet.spy.publish(model_part_topic(0), encode_message(ModelPart("ab" * 32, 0, 1, b"x")), retain=True)
    assert [fleet.broker.stats(a.device_id).messages_received for a in fleet.agents] == before


def _lose_parts_then_run(fleet, clock_step: float) -> None:
    """Begin a round, delete its retained parts before any device subscribed, let the devices
    wait past model_wait_s and tick."""
    assert fleet.coordinator.begin_round()
    for topic in _retained_parts(fleet):
        fleet.spy.publish(topic, b"", retain=True)  # what a broker restart without persistence does
    fleet.drain()
    assert all(a.delivery.model_waits.listening for a in fleet.agents)
    fleet.clock.advance(clock_step)
    for agent in fleet.agents:
        agent.tick()


def test_a_device_that_cannot_get_the_parts_gets_its_task_inline(model, tmp_path, caplog):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART)
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        _lose_parts_then_run(fleet, 16.0)
    assert caplog.text.count("asking for it inline") == len(SIZES)
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == len(SIZES), record
    assert not fleet.coordinator.rejections
    inline = [t for t in fleet.tasks() if t.params]
    assert sorted(t.device_id for t in inline) == ["dev0", "dev1", "dev2"]
    assert all(not a.delivery.parts_subscribed for a in fleet.agents)


def test_a_corrupt_part_sends_the_device_to_the_inline_path(model, tmp_path, caplog):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART)
    assert fleet.coordinator.begin_round()
    good = fleet.coordinator.round.model_parts[0]
    sha = fleet.coordinator.round.round_model_sha256
    count = len(fleet.coordinator.round.model_parts)
    bad = ModelPart(sha, 0, count, b"\x00" * PART)
    assert encode_message(bad) != good
    fleet.spy.publish(model_part_topic(0), encode_message(bad), retain=True)
    with caplog.at_level(logging.WARNING, logger="fedge.agent"):
        fleet.drain()
    assert caplog.text.count("do not hash") == len(SIZES)
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == len(SIZES), record


def test_a_device_that_gets_neither_declines_by_name(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART, min_reports=1)
    _lose_parts_then_run(fleet, 16.0)  # the inline requests are queued, not yet served
    fleet.clock.advance(130.0)
    for agent in fleet.agents:
        agent.tick()
    fleet.drain()  # the coordinator now sends inline copies: too late, the device repeats its decline
    assert fleet.coordinator.declines["round_model_timeout"] == len(SIZES)
    assert sorted(fleet.coordinator.round.machine.declined) == ["dev0", "dev1", "dev2"]
    assert not fleet.updates()


def test_an_inline_request_for_a_task_that_is_not_open_is_refused(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(10,), model_part_bytes=PART)
    pi = ManualDevice(fleet, "pi", 5, eligible=False)  # never selected
    fleet.drain()
    pi.send(encode_message(FetchRequest("pi", "tiny", task_id="not-a-task")), channel="fetch")
    fleet.drain()
    assert fleet.coordinator.rejections["unknown_task"] == 1
    assert not [m for m in pi.inbox if isinstance(m, TrainTask)]
    _round(fleet)  # still serving
    assert fleet.coordinator.tick().committed


@pytest.mark.parametrize("bad", [-1, 1, 255])
def test_a_part_size_below_256_bytes_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="model_part_bytes"):
        CoordinatorConfig(model_part_bytes=bad)


def test_parts_over_the_packet_limit_fall_back_to_inline_tasks(model, tmp_path, caplog, monkeypatch):
    """MqttTransport refuses a retained message larger than one packet (it cannot be chunked);
    the coordinator logs the config problem and sends this round's params inline."""
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART)
    publish = fleet.coordinator.transport.publish

    def one_packet_only(topic, payload, *, qos=1, retain=False):
        # part 0 fits, part 1 does not: part 0 is left retained and must be cleaned up
        if retain and topic.startswith("fedge/v1/model/") and topic != model_part_topic(0) and payload:
            raise PayloadTooLarge(f"retained message of {len(payload)} bytes to {topic!r} does not fit one packet")
        publish(topic, payload, qos=qos, retain=retain)

    monkeypatch.setattr(fleet.coordinator.transport, "publish", one_packet_only)
    with caplog.at_level(logging.ERROR, logger="fedge.coordinator"):
        _round(fleet)
    assert "model_part_bytes" in caplog.text
    assert _retained_parts(fleet) == []  # no half-published model stays on the broker
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == len(SIZES), record
    assert all(t.params and not t.round_model_sha256 for t in fleet.tasks())



def test_inline_requests_past_the_first_are_refused_by_name_until_task_resend_s(model, tmp_path, caplog):
    """Each inline request used to write an INFO line saying the task went again, though only
    the first in task_resend_s did: 20,000 requests, 20,000 lines, nothing counted."""
    fleet = make_fleet(model, tmp_path, sizes=(), model_part_bytes=PART)
    pi = ManualDevice(fleet, "pi", 5)
    fleet.drain()
    _round(fleet)
    task = pi.task()
    pi.inbox.clear()
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        for _ in range(50):
            pi.send(encode_message(FetchRequest("pi", task.model_id, task_id=task.task_id)), channel="fetch")
        fleet.drain()
    pi.receive()
    assert len([m for m in pi.inbox if isinstance(m, TrainTask) and m.params]) == 1
    assert caplog.text.count("sent again with its params inline") == 1
    assert fleet.coordinator.rejections["rate_limited"] == 49


def test_a_device_still_listening_for_an_old_round_gets_the_next_rounds_parts(model, tmp_path, caplog):
    """Round 1's parts are lost, so each device is still subscribed, waiting for them, when
    round 2 begins; round 2's parts reach it live before its task names them and are ignored.
    The new task used to wait for parts that had already passed, ask inline after model_wait_s,
    and find its round closed: on a fleet whose rounds last under model_wait_s (found over
    Mosquitto: one device, once behind, never trained again) a device stuck this way stays stuck."""
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART, round_deadline_s=5.0,
                       abandon_backoff_s=0.0)
    _lose_parts_then_run(fleet, 6.0)  # past round 1's deadline, short of model_wait_s (15 s)
    record = fleet.coordinator.tick()
    assert record is not None and not record.committed  # round 1: no reports, abandoned
    assert all(a.delivery.parts_subscribed for a in fleet.agents)  # still listening for round 1
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        _round(fleet)  # round 2: parts (live to the listeners), then tasks
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == len(SIZES), record
    assert "asking for it inline" not in caplog.text
    assert not [t for t in fleet.tasks() if t.params]  # nobody needed an inline copy
