"""When an upload is timed (edge_runtime/uplink_rate.py): from its first send across resends (an
upload slower than republish_s is still timed), never across blocking work in the agent's loop
(an Ack queued behind a training or an evaluation is stamped late), and the envelope joins the
margin only once the rate is learned (until then learning on and off agree bit for bit). The
agent on the in-memory broker with a ManualClock; the expected readings from the documented
formula, bytes / (elapsed - latency_s), written out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Ack, EvalTask, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.upload_margin import UploadLink, upload_margin_s
from tests.edge_runtime.one_device import DEVICE, one_device
from tests.edge_runtime.test_uplink_rate import (
    CONFIGURED,
    LATENCY,
    LEARNING,
    _published_updates,
    _task,
    _train_and_ack,
    _updates,
)
from tests.tiny_model import build_tiny_model

BLOCKED_S = 60.0  # how long the blocking work takes on the agent's clock
ACK_AFTER_S = 0.2  # the link is fast: the Ack is back this long after the send


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _ack(coord, task_id: str, update_id: str) -> None:
    coord.publish(device_topic(DEVICE, "ack"), encode_message(Ack(DEVICE, 1, task_id, update_id, True)))


def test_an_ack_queued_behind_another_tasks_training_is_not_timed(model, tmp_path):
    """Task b arrives while a trains; a's Ack comes 0.2 s after a's update but waits behind b's
    60 s training. Timed, it read 10.9 bytes/s and sank the rate to the clamp."""
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=LEARNING)
    real = agent.runtime.handle_task

    def slow_training(task, *args, **kwargs):
        clock.advance(BLOCKED_S)
        return real(task, *args, **kwargs)

    agent.runtime.handle_task = slow_training
    for i in range(4):
        coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, f"a{i}")))
        coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, f"b{i}")))
        agent.poll(0.0)  # a trains; its update goes out
        ((first, _),) = _published_updates(coord)
        clock.advance(ACK_AFTER_S)
        _ack(coord, first.task_id, first.update_id)  # queued behind b
        ((second, _),) = _updates(agent, coord)  # b trains (60 s), then a's Ack is handled
        _ack(coord, second.task_id, second.update_id)  # b's Ack at once: censored, the configured rate
        assert _updates(agent, coord) == []
    assert list(agent.uplink.rate.observations) == [CONFIGURED] * 4  # b's four only
    assert agent.uplink.rate.bytes_per_s == CONFIGURED


def test_an_ack_queued_behind_an_evaluation_is_not_timed(model, tmp_path):
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=LEARNING)
    agent.evals.answer = lambda task, publish: clock.advance(BLOCKED_S)  # a head refit that takes 60 s
    _, manifest, runtime = model
    coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, "t")))
    ((update, _),) = _updates(agent, coord)
    clock.advance(ACK_AFTER_S)
    coord.publish(device_topic(DEVICE, "task"), encode_message(
        EvalTask("e", DEVICE, manifest.model_id, 0, 0, encode_dense(runtime.initial("shared")))))
    _ack(coord, update.task_id, update.update_id)  # behind the evaluation
    assert _updates(agent, coord) == []
    assert list(agent.uplink.rate.observations) == []


@pytest.mark.parametrize("took", [15.0, 25.0])
def test_an_upload_slower_than_republish_s_is_timed_from_its_first_send(model, tmp_path, took):
    """The loop resends after republish_s (10 s); the Ack after the resend times the first send:
    bytes / (took - latency_s), a lower bound of the rate if it answers the first copy."""
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=LEARNING)
    assert agent.uplink.republish_s < took
    _, sent_bytes = _train_and_ack(model, agent, coord, clock, "slow", took, resend=True)
    assert list(agent.uplink.rate.observations) == pytest.approx([sent_bytes / (took - LATENCY)], rel=1e-12)


def test_a_reconnect_forgets_the_updates_in_flight(model, tmp_path):
    """The time offline is not the link's rate."""
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=LEARNING)
    coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, "t")))
    ((update, _),) = _updates(agent, coord)
    clock.advance(300.0)
    agent.on_reconnect()
    _ack(coord, update.task_id, update.update_id)
    while agent.poll(0.0):
        pass
    assert list(agent.uplink.rate.observations) == []


def test_until_the_rate_is_learned_the_margin_is_the_configured_one_bit_for_bit(model, tmp_path):
    clock = ManualClock()
    guess = UploadLink(LATENCY, 10_000.0)
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=replace(guess, learn_rate=True))
    probes = [replace(_task(model, "probe"), deadline_s=d) for d in (600.0, 1.0)]
    for i in range(3):
        for probe in probes:
            assert agent.uplink.margin_s(probe) == upload_margin_s(probe, guess)  # i observations, i < 3
        _train_and_ack(model, agent, coord, clock, f"t{i}", 3.0)
    assert agent.uplink.margin_s(probes[0]) != upload_margin_s(probes[0], guess)  # learned from the 3rd
