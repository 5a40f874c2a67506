"""The device learns its upload rate (edge_runtime/uplink_rate.py): each update's first send timed
to its Ack, one observation bytes / max(elapsed - latency_s, 50 ms) (a transfer under the floor
counted as at least the configured rate), the lower quartile of the last 8 once 3 exist, clamped
to [configured / 100, configured x 100]. The estimator against a plain loop of that rule; the
agent fed from a real publish -> Ack on the in-memory broker with a ManualClock (resends and
blocking work: test_uplink_rate_timing.py);
the clamp; and learn_upload_rate = false giving the configured margin bit for bit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tomllib

from fedge.coordinator.async_mode.machine import Admit, Arrived, AsyncMachine, Dispatched, Flight
from fedge.coordinator.async_mode.machine import on_event as async_event
from fedge.edge_runtime.device_config import AgentConfig, DeviceConfig
from fedge.edge_runtime.device_init import device_toml
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.configfile import from_dict
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import Ack, CompressionSpec, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.uplink_rate import UplinkRate, learned_rate, observed_rate
from fedge.edge_runtime.upload_margin import UploadLink, update_bytes, upload_margin_s
from tests.edge_runtime.one_device import DEVICE, one_device, pump, stepping_device
from tests.edge_runtime.test_upload_margin import DOWN_S
from tests.edge_runtime.test_upload_margin import _task as _stepping_task
from tests.tiny_model import build_tiny_model

LATENCY, CONFIGURED = 1.0, 125_000.0
LEARNING = UploadLink(LATENCY, CONFIGURED, learn_rate=True)


def _reference_rates(observations: list[tuple[int, float]]) -> list[float]:
    """The documented rule as a plain loop: after each (bytes, publish-to-Ack seconds), the rate."""
    rates, out = [], []
    for sent_bytes, elapsed in observations:
        transfer = elapsed - LATENCY
        rates.append(sent_bytes / transfer if transfer > 0.05 else max(sent_bytes / 0.05, CONFIGURED))
        window = rates[-8:]
        if len(window) < 3:
            out.append(CONFIGURED)
            continue
        ordered = sorted(window)
        out.append(min(max(ordered[(len(window) - 1) // 4], CONFIGURED / 100), CONFIGURED * 100))
    return out


def test_the_estimate_is_the_clamped_lower_quartile_of_the_last_8_observations():
    rng = np.random.default_rng(11)
    # a link that changes: fast LAN, then cellular, then absurd readings (a jump, nothing at all)
    elapsed = [*rng.uniform(1.0, 1.3, 10), *rng.uniform(3.0, 30.0, 12), 1e6, 0.0, -5.0, *rng.uniform(1, 9, 6)]
    sizes = rng.integers(1_000, 2_000_000, len(elapsed))
    observations = [(int(b), float(e)) for b, e in zip(sizes, elapsed, strict=True)]
    rate, got = UplinkRate(DEVICE, LATENCY, CONFIGURED), []
    for i, (sent_bytes, took) in enumerate(observations):
        rate.sent(f"u{i}", sent_bytes, 100.0 * i)
        rate.acked(f"u{i}", 100.0 * i + took)
        got.append(rate.bytes_per_s)
    want = _reference_rates(observations)
    assert got == pytest.approx(want, rel=1e-12)
    assert len(set(want)) > 10 and CONFIGURED in want  # the sequence exercises more than the start value


def test_one_observation_is_bytes_over_the_time_past_the_latency_and_a_short_one_is_censored():
    assert observed_rate(500_000, 5.0, 1.0, CONFIGURED) == 125_000.0
    assert observed_rate(500_000, 1.04, 1.0, CONFIGURED) == 500_000 / 0.05  # under the floor: at least this fast
    assert observed_rate(1_000, 0.01, 1.0, CONFIGURED) == CONFIGURED  # 1 kB / 50 ms claims no slow link
    assert observed_rate(1_000, float("nan"), 1.0, CONFIGURED) == CONFIGURED


@pytest.mark.parametrize("took, bound", [(1e9, CONFIGURED / 100), (-1e9, CONFIGURED * 100), (0.0, CONFIGURED * 100)])
def test_absurd_measurements_stay_within_the_clamp(took, bound):
    """A clock jump (or an Ack in no time for a huge update) cannot make the rate 0 or infinite."""
    rate = UplinkRate(DEVICE, LATENCY, CONFIGURED)
    for i in range(3):
        rate.sent(f"u{i}", 10**9, 0.0)
        rate.acked(f"u{i}", took)
    assert rate.bytes_per_s == bound
    assert learned_rate([0.0, 0.0, 0.0], CONFIGURED) == CONFIGURED / 100


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _task(model, task_id: str) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(round_id=1, task_id=task_id, device_id=DEVICE, model_id=manifest.model_id, model_version=0,
                     params=encode_dense(runtime.initial("shared")), deadline_s=600.0,
                     hyper=TaskHyper(epochs=1, batch_size=8, lr=0.05), compression=CompressionSpec(quant_bits=32))


def _updates(agent, coord) -> list[tuple[Update, int]]:
    """Run the agent until idle; the Updates it published, each with its length on the wire."""
    while agent.poll(0.0):
        pass
    agent.tick()
    return _published_updates(coord)


def _published_updates(coord) -> list[tuple[Update, int]]:
    """The Updates published so far, each with its length on the wire (no poll: what is queued stays)."""
    sent = []
    while (msg := coord.receive(0.0)) is not None:
        message = decode_message(msg.payload)
        if isinstance(message, Update):
            sent.append((message, len(msg.payload)))
    return sent


def _train_and_ack(model, agent, coord, clock, task_id: str, took: float,
                   resend: bool = False) -> tuple[Update, int]:
    """One task trained and its update acked `took` seconds after its first send (after a resend
    of it if `resend`); the update, and its message's bytes on the wire."""
    coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, task_id)))
    ((update, sent_bytes),) = _updates(agent, coord)
    if resend:
        clock.advance(agent.uplink.republish_s)
        assert [u.update_id for u, _ in _updates(agent, coord)] == [update.update_id]  # the resend went out
        clock.advance(took - agent.uplink.republish_s)
    else:
        clock.advance(took)
    coord.publish(device_topic(DEVICE, "ack"), encode_message(Ack(DEVICE, 1, task_id, update.update_id, True)))
    assert _updates(agent, coord) == []
    return update, sent_bytes


def test_the_agent_times_each_update_from_its_publish_to_its_ack(model, tmp_path):
    clock = ManualClock()
    guess = UploadLink(LATENCY, 10_000.0)  # the test model's update message is about 650 bytes
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=replace(guess, learn_rate=True))
    task = _task(model, "probe")
    assert agent.uplink.margin_s(task) == upload_margin_s(task, guess)  # nothing learned yet
    took = [3.0, 6.0, 2.0, 4.0]  # a slow link: 1 to 5 s past the 1 s latency
    sent = [_train_and_ack(model, agent, coord, clock, f"t{i}", s) for i, s in enumerate(took)]
    rates = [b / (s - LATENCY) for (_, b), s in zip(sent, took, strict=True)]
    assert list(agent.uplink.rate.observations) == pytest.approx(rates, rel=1e-12)
    assert guess.bytes_per_s / 100 < min(rates) and max(rates) < guess.bytes_per_s / 10  # slower, within the clamp
    learned = min(rates)  # the lower quartile of 4 is the slowest
    last, last_bytes = sent[-1]
    envelope = last_bytes - len(last.payload) - len(last.control)  # ids and metrics: the margin adds them
    assert 100 < envelope < last_bytes / 2
    assert agent.uplink.margin_s(task) == pytest.approx(LATENCY + (update_bytes(task) + envelope) / learned,
                                                         rel=1e-12)
    assert agent.uplink.margin_s(task) > 2 * upload_margin_s(task, guess)


def test_learning_off_keeps_the_configured_margin_bit_for_bit(model, tmp_path):
    clock = ManualClock()
    link = AgentConfig(learn_upload_rate=False).upload_link()
    assert link == UploadLink(LATENCY, CONFIGURED)
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=link)
    for i in range(4):
        _train_and_ack(model, agent, coord, clock, f"t{i}", 30.0)
    assert agent.uplink.rate is None
    for deadline in (600.0, 1.0):
        task = replace(_task(model, "probe"), deadline_s=deadline)
        assert agent.uplink.margin_s(task) == upload_margin_s(task, UploadLink(LATENCY, CONFIGURED))


def test_the_switch_is_on_by_default_in_the_config_and_the_template_and_refuses_a_non_boolean():
    assert AgentConfig().upload_link() == LEARNING
    with pytest.raises(ConfigError, match="learn_upload_rate"):
        AgentConfig(learn_upload_rate="yes")
    template = tomllib.loads(device_toml("pi-001", "mqtt://localhost:1883", "/d.npz", "/var/lib/fedge"))
    assert template["agent"]["learn_upload_rate"] is True
    assert from_dict(DeviceConfig, template, "device init").agent.upload_link().learn_rate is True


SLOW_UP_S = 6.0  # the real link: every update reaches the coordinator, and its Ack the device, 6 s after its send


@pytest.mark.parametrize("learn", [False, True])
def test_on_a_link_slower_than_configured_a_learned_margin_sends_no_update_that_lands_late(model, tmp_path, learn):
    """15 one-second steps (test_upload_margin's stepping device); the coordinator's deadline is
    DOWN_S before the device's. Configured at 10,000 bytes/s the 648-byte update's margin is about
    1.04 s: with an 18 s deadline the update went out at 15 s and landed at 21 s, past the
    coordinator's 17.8 s (stale_round, its training thrown away). After three uploads acked 6 s
    after their send the device stops 6 s early instead: aborted:deadline at once, the slot freed."""
    guess = UploadLink(LATENCY, 10_000.0, learn_rate=learn)
    agent, coord, clock = stepping_device(model, tmp_path, upload_link=guess)
    for i in range(3):  # three ordinary rounds over the slow link
        coord.publish(device_topic(DEVICE, "task"), encode_message(_stepping_task(model, f"warm{i}", 600.0)))
        (update,) = [r for r in pump(agent, coord) if isinstance(r, Update)]
        clock.advance(SLOW_UP_S)
        coord.publish(device_topic(DEVICE, "ack"), encode_message(Ack(DEVICE, 1, update.task_id, update.update_id,
                                                                      True)))
        pump(agent, coord)
    arrives, task = clock.now(), _stepping_task(model, "t", 18.0)
    if learn:  # the same-size update's margin is the 6 s its uploads took (the estimate within 3%)
        assert agent.uplink.margin_s(task) == pytest.approx(SLOW_UP_S, rel=0.03)
    flight = Flight("t", 1, 0, arrives - DOWN_S + 18.0)
    machine, _ = async_event(AsyncMachine(0, 3, 2, 1), Dispatched(DEVICE, flight))
    coord.publish(device_topic(DEVICE, "task"), encode_message(task))
    (reply,) = [r for r in pump(agent, coord) if isinstance(r, (Update, Decline))]
    if learn:
        assert (reply.reason, reply.stage) == ("aborted:deadline", "during"), reply
        assert clock.now() - arrives <= 18.0 - SLOW_UP_S + 1.0  # stopped 6 s before its deadline, not 1 s
    else:  # today's margin: the update is sent, and the coordinator refuses it as late
        assert isinstance(reply, Update) and reply.metrics["steps"] == 15
        late = async_event(machine, Arrived(DEVICE, "t", clock.now() + SLOW_UP_S))[1]
        assert late != [Admit(DEVICE, 0)], late
