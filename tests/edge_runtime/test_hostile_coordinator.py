"""Every network input is hostile, on the device too: a DeviceAgent fed thousands of frames a
compromised coordinator could send (every message it reads, fields at the edges of their
ranges, manifests naming odd files, raw garbage) must not raise, write outside its state
folder, grow its memory, or stop training honest tasks.

Every 20th message is a transfer (hostile_coordinator.transfer): a task naming a crafted
manifest by its hash, the manifest and some of its files, so file names reach the disk code.
The clock ticks on every reading, so a task of a million epochs meets the device's time cap
here (MAX_TASK_S), not the test's patience."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    Ack,
    CompressionSpec,
    Decline,
    TaskHyper,
    TrainTask,
    Update,
    device_topic,
    model_part_topic,
)
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.work_limits import TASKS_KEPT
from tests.edge_runtime.hostile_coordinator import HostileCoordinator
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, tree_digest
from tests.tiny_model import build_tiny_model

MESSAGES = 3000  # about 6 s here
MAX_TASK_S = 2.0  # the device's own cap on one task's training (seconds of its clock)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _device(model, root, clock):
    agent, coord = one_device(model, root, channels=("update", "fetch", "checkin"), clock=clock,
                              max_task_s=MAX_TASK_S)
    coord.subscribe(f"fedge/v1/shard/+/devices/{DEVICE}/update")  # a hostile task may name any shard
    return agent, coord


def _legit(model, task_id: str) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(7, task_id, DEVICE, manifest.model_id, 3, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=2, batch_size=8, lr=0.05), CompressionSpec(quant_bits=32), deadline_s=600.0)


def _publish(coord, rng, channel: str, payload: bytes) -> None:
    if channel == "announce":
        coord.publish(ANNOUNCE_TOPIC, payload, retain=bool(rng.integers(0, 2)))
    elif channel == "model":
        coord.publish(model_part_topic(int(rng.integers(0, 3))), payload, retain=True)
    else:
        coord.publish(device_topic(DEVICE, channel), payload)


def _answer(sent: list, task_id: str):
    return [m for m in sent if isinstance(m, (Update, Decline)) and m.task_id == task_id]


def _assert_valid_update(reply, model) -> None:
    _, manifest, _ = model
    assert isinstance(reply, Update), reply
    delta = decompress_update(decode_tensors(reply.payload))
    assert set(delta) == {p.name for p in manifest.by_role("shared")}
    assert all(np.all(np.isfinite(v)) for v in delta.values())


def test_a_device_survives_a_storm_from_a_hostile_coordinator(model, tmp_path):
    art = model[0]
    clock = TickingClock()
    state = tmp_path / "state"
    agent, coord = _device(model, state, clock)
    rng = np.random.default_rng(20261205)
    _, manifest, runtime = model
    hostile = HostileCoordinator(DEVICE, runtime.initial("shared"), manifest.model_id,
                                 (art / "manifest.json").read_bytes(), rng)
    artifacts_before = tree_digest(art)
    process = psutil.Process()
    legit_answers, base = [], 0
    for i in range(MESSAGES):
        if i % 300 == 150:  # an honest task now and then: it must still be answered
            coord.publish(device_topic(DEVICE, "task"), encode_message(_legit(model, f"legit{i}")))
            legit_answers.append(_answer(pump(agent, coord), f"legit{i}"))
        for channel, payload in hostile.transfer() if i % 20 == 0 else [hostile.frame()]:
            _publish(coord, rng, channel, payload)
        pump(agent, coord)
        clock.advance(float(rng.choice([0.0, 0.0, 1.0, 30.0])))
        if i == 1000:
            gc.collect()
            base = process.memory_info().rss
    gc.collect()
    grown = process.memory_info().rss - base
    assert grown < 20 << 20, f"memory grew {grown / 2**20:.1f} MiB over the last {MESSAGES - 1000} messages"
    assert len(agent.tasks) <= TASKS_KEPT and len(agent.pending) <= agent.max_pending
    # Honest tasks in the storm were answered (an Update, or a Decline saying why), once.
    assert all(len(a) == 1 for a in legit_answers), legit_answers
    # Nothing written outside the device's state folder, and its installed model untouched.
    assert {p.name for p in tmp_path.iterdir()} == {"state"}
    assert tree_digest(art) == artifacts_before
    assert all(f.resolve().is_relative_to(state.resolve()) for f in state.rglob("*"))
    # The device still checks in within a day, whatever Pace it was sent.
    assert agent.next_checkin - clock.now() <= agent.max_pace_s
    # After the storm, an honest coordinator acknowledges what it got, and its task trains
    # and yields a valid update.
    for item in agent.pending.items():
        sent = decode_message(item.payload)
        coord.publish(device_topic(DEVICE, "ack"), encode_message(Ack(DEVICE, sent.round_id, sent.task_id,
                                                                      sent.update_id, True)))
    clock.advance(3600.0)
    coord.publish(device_topic(DEVICE, "task"), encode_message(_legit(model, "after")))
    (reply,) = _answer(pump(agent, coord), "after")
    _assert_valid_update(reply, model)
    personal = DeviceStore(state / DEVICE, manifest.model_id).load_personal()
    assert personal and all(np.all(np.isfinite(v)) for v in personal.values())


def test_announcements_of_ever_new_model_ids_do_not_grow_the_device(model, tmp_path):
    """The device remembered the announced version of every model id any Announcement named,
    for as long as it ran; it keeps the latest ANNOUNCED_KEPT, the latest one among them."""
    from fedge.edge_runtime.kernel.clock import ManualClock
    from fedge.edge_runtime.kernel.protocol import Announcement
    from fedge.edge_runtime.work_limits import ANNOUNCED_KEPT

    agent, coord = _device(model, tmp_path / "state", ManualClock())
    own = model[1].model_id
    for model_id, version in [(own, 7), *((f"m{i}", i) for i in range(40 * ANNOUNCED_KEPT)), (own, 9)]:
        coord.publish(ANNOUNCE_TOPIC, encode_message(Announcement(model_id, version, "")))
        pump(agent, coord)
    expected = {f"m{i}": i for i in range(39 * ANNOUNCED_KEPT + 1, 40 * ANNOUNCED_KEPT)} | {own: 9}
    assert agent.runtime.announced == expected


@pytest.mark.parametrize("stale", ["pace", "task"])
def test_a_retained_message_on_the_device_topics_is_stale_and_ignored(model, tmp_path, stale):
    """A coordinator never retains what it sends on a device's own topics; a retained one (a
    misbehaving coordinator, another version, anyone who can publish there) came back at every
    restart: a Pace of a day kept the device from checking in for that day each time, and a
    task was trained again once the journal had forgotten it (here: a fresh state folder)."""
    from fedge.edge_runtime.agent import DeviceAgent
    from fedge.edge_runtime.device import DeviceRuntime
    from fedge.edge_runtime.kernel.clock import ManualClock
    from fedge.edge_runtime.kernel.protocol import Pace

    clock = ManualClock()
    agent, coord = _device(model, tmp_path / "state", clock)
    message = Pace(DEVICE, 86400.0, "no_round") if stale == "pace" else _legit(model, "old")
    coord.publish(device_topic(DEVICE, "task"), encode_message(message), retain=True)
    pump(agent, coord)  # the running device takes it live, as sent
    runtime = DeviceRuntime(DEVICE, agent.runtime.data, agent.runtime.model_dirs, tmp_path / "fresh", seed=3)
    restarted = DeviceAgent(runtime, coord._broker.connect(DEVICE), clock=clock, checkin_s=60.0)
    restarted.start()
    sent = pump(restarted, coord)
    assert _answer(sent, "old") == []
    assert restarted.next_checkin - clock.now() <= 60.0
