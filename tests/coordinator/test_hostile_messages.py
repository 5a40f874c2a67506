"""No input kills or wedges the coordinator.

The two messages that used to kill it (a check-in, and an update for the device's own task,
each claiming 2**63 examples: OverflowError inside SQLite), then a fuzz run of more than
10,000 random and extreme messages of every type against a live round with the store on:
the coordinator handles every one, each surely invalid one is refused as `malformed`, no
rejection goes unnamed, and RSS grows by at most 20 MB after the first 1,000. Last, the loop
itself: an exception from handling one message costs that message, not the service.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.loop import CoordinatorLoop
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import (
    MESSAGE_TYPES,
    Ack,
    Announcement,
    ArtifactFile,
    CheckIn,
    Decline,
    EvalReport,
    EvalTask,
    FetchRequest,
    ModelPart,
    Pace,
    RoundModel,
    Status,
    TaskHyper,
    all_devices_topic,
)
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, fedavg_oracle, make_fleet, random_delta
from tests.coordinator.hostile import CODES, as_map, mutate, named_reasons, raw_frame
from tests.coordinator.test_malformed_flood import _rss
from tests.tiny_model import build_tiny_model

CHANNEL = {CheckIn: "checkin", Status: "status", FetchRequest: "fetch"}  # the rest: "update"
PER_TYPE = 780  # x 14 types = 10,920 messages


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _open_round(model, tmp_path, names=("a", "b")):
    store = RoundStore(tmp_path / "state.db")
    fleet = make_fleet(model, tmp_path, clients_per_round=len(names), min_reports=1, store=store)
    fleet.spy.unsubscribe(all_devices_topic("update"))  # the spy would keep every flooded message
    fleet.spy.unsubscribe(all_devices_topic("task"))
    devices = [ManualDevice(fleet, name, 7 - 2 * i) for i, name in enumerate(names)]
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    return fleet, store, *devices


def _judge(fleet, device: ManualDevice, frame: bytes, channel: str) -> Counter:
    """Send one message and pump it; returns the rejections it caused."""
    c = fleet.coordinator
    before = Counter(c.rejections)
    device.send(frame, channel=channel)
    while c.pump(0.0):  # raises if the message kills the coordinator
        pass
    device.discard()
    return Counter(c.rejections) - before


def test_the_two_crash_messages_are_refused_by_name_and_the_round_still_commits(model, tmp_path):
    fleet, store, a, b = _open_round(model, tmp_path)
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    old = copy_params(c.state.params)
    rng = np.random.default_rng(0)
    checkin = as_map(CheckIn("a", num_examples=7))
    update = a.update(random_delta(shapes, rng))
    crash_checkin = raw_frame(CODES[CheckIn], {**checkin, "num_examples": 2**63})
    crash_update = raw_frame(CODES[type(update)], {**as_map(update), "num_examples": 2**63})
    assert _judge(fleet, a, crash_checkin, "checkin") == {"malformed": 1}
    assert _judge(fleet, a, crash_update, "update") == {"malformed": 1}
    # zero examples frames fine (a decline's count may be 0) but is no update: a value, not a shape
    assert _judge(fleet, a, encode_message(dataclasses.replace(update, num_examples=0)), "update") == {"malformed": 1}
    assert {d.device_id: d.num_examples for d in store.load_devices()} == {"a": 7, "b": 5}
    assert c.round.machine.reported == []
    # Still serving: both genuine updates are accepted and the round commits them.
    good_b = b.update(random_delta(shapes, rng))
    for device, good in ((a, update), (b, good_b)):
        device.send(encode_message(good))
    fleet.drain()
    assert a.acks() == [(True, "")] and b.acks() == [(True, "")]
    record = c.tick()
    assert record.committed and record.reports == 2
    assert_params(c.state.params, fedavg_oracle(old, [update, good_b]))


def _bases(fleet, a: ManualDevice, d: ManualDevice) -> list:
    """(sender, message): one valid message of every type for an open task where there is one;
    a sends all but the Decline, which d sends, so a valid decline does not end a's task and
    the update checks stay reachable."""
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    task, task_d = a.task(), d.task()
    upd = a.update(random_delta(shapes, np.random.default_rng(1)), update_id="fz")
    out = [(d, Decline("d", task_d.round_id, task_d.task_id, "battery_low", "soc 9%"))] + [(a, m) for m in (
        CheckIn("a", backends=("ort-training",), model_ids=(task.model_id,), num_examples=7),
        task, upd,
        Ack("a", task.round_id, task.task_id, "fz", True),
        Status("a", True, "up"),
        Pace("a", 30.0, "not_selected"),
        FetchRequest("a", task.model_id, ("manifest.json",)),
        ArtifactFile(task.model_id, "manifest.json", "ab" * 32, b"{}"),
        Announcement(task.model_id, 0, "ab" * 32, task.round_id, "training"),
        RoundModel(task.model_id, 0, task.round_id, b"\x00" * 8),
        ModelPart("ab" * 32, 0, 1, b"\x00" * 8),
        EvalTask("e1", "a", task.model_id, 0, task.round_id, b"\x00" * 8),
        EvalReport("a", "e1", 0, 7, True, 0.7, 0.5, True, 0.4, 0.75),
    )]
    assert {type(m) for _, m in out} == set(MESSAGE_TYPES.values())
    return out


def test_ten_thousand_random_and_extreme_messages_of_every_type(model, tmp_path):
    fleet, store, a, b, d = _open_round(model, tmp_path, ("a", "b", "d"))
    c = fleet.coordinator
    bases = _bases(fleet, a, d)
    rng = np.random.default_rng(2026)
    known = named_reasons()
    order = rng.permutation(np.repeat(np.arange(len(bases)), PER_TYPE))
    invalid, reasons = 0, Counter()
    rss_after_warmup = 0
    for n, i in enumerate(order):
        if n == 1000:
            rss_after_warmup = _rss()
        sender, base = bases[i]
        frame, bad = mutate(base, rng)
        channel = CHANNEL.get(type(base), "update") if rng.random() < 0.9 else "checkin"
        got = _judge(fleet, sender, frame, channel)
        assert sum(got.values()) <= 1, got
        assert set(got) <= known, f"unnamed rejection {got} for {type(base).__name__}"
        reasons += got
        if bad:
            invalid += 1
            assert got in ({"malformed": 1}, {"truncated": 1}), (type(base).__name__, got)
    grown = _rss() - rss_after_warmup
    assert len(order) >= 10_000 and invalid > 3000
    assert not any(r.startswith("internal") for r in reasons)
    assert grown <= 20 << 20, f"RSS grew by {grown / 2**20:.1f} MB after the first 1,000 messages"
    print(f"\n{len(order)} messages, {invalid} surely invalid, rejections {dict(reasons)}, "
          f"RSS +{grown / 2**20:.1f} MB after the first 1,000")
    # Still serving: b's genuine update is accepted, and the round is the one we opened.
    assert c.round is not None and c.round.ctx.round_id == 1
    shapes = {k: v.shape for k, v in c.state.params.items()}
    b.send(encode_message(b.update(random_delta(shapes, rng))))
    fleet.drain()
    assert b.acks() == [(True, "")]


def test_an_exception_from_handling_one_message_costs_that_message_not_the_loop(model, tmp_path):
    """The loop's own net, under the codec's: a handler that raises (here the store, as SQLite
    did for 2**63) drops that message, is counted by name, and the next message is served."""
    fleet, store, a, b = _open_round(model, tmp_path)
    c = fleet.coordinator
    loop = CoordinatorLoop(c, poll_s=0.0)
    real = store.save_device

    def broken(device):
        if device.num_examples == 13:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        real(device)

    store.save_device = broken
    a.send(encode_message(CheckIn("a", num_examples=13)), channel="checkin")
    b.send(encode_message(CheckIn("b", num_examples=6)), channel="checkin")
    assert loop._pump(0.0) and loop._pump(0.0)
    assert c.rejections == {"internal:OverflowError": 1}
    assert {d.device_id: d.num_examples for d in store.load_devices()} == {"a": 7, "b": 6}
    text = c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": "internal:OverflowError"})
    assert text == 1.0


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(pace_max_s=1e12), dict(round_deadline_s=1e10),
                                 dict(hyper=TaskHyper(weight_decay=2e6)), dict(max_examples=0),
                                 dict(weighting="loudest"), dict(abandon_backoff_s=10.0, abandon_backoff_max_s=1.0)])
def test_a_config_the_coordinator_could_not_send_or_weigh_is_refused_at_start(bad):
    """The codec's ranges hold for what the coordinator sends too: a value that would fail to
    encode in the middle of a round is a ConfigError when the config loads."""
    with pytest.raises(ConfigError):
        CoordinatorConfig(**bad)
    CoordinatorConfig()  # the defaults pass
