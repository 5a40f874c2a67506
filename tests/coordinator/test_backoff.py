"""No device and no failing fleet makes the coordinator spin.

One device whose data does not fit declines every task with bad_dataset; it used to be
selected again at once (321 abandoned rounds in 30 s). Now it is parked until it checks in
with something new, and abandoned rounds in a row space out exponentially: the loop, run on
a simulated clock, begins at most one round per backoff interval.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.backoff import abandoned_delay, fingerprint, is_permanent, parked_after
from fedge.coordinator.loop import CoordinatorLoop
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, CompressionSpec, Decline, Pace, TrainTask, device_topic
from tests.coordinator.fleet import ManualDevice, local_data, make_fleet, one_device_round
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_abandoned_delay_doubles_up_to_the_cap():
    assert [abandoned_delay(n, 1.0, 300.0) for n in range(0, 12)] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert abandoned_delay(10**6, 1.0, 300.0) == 300.0  # no overflow for a long failing streak
    assert abandoned_delay(5, 0.0, 300.0) == 0.0  # 0 turns it off


def test_parking_rules():
    first = fingerprint(CheckIn("d", num_examples=5))
    assert is_permanent("bad_dataset") and is_permanent("backend_unavailable") and not is_permanent("battery_low")
    assert parked_after("bad_dataset", first, fingerprint(CheckIn("d", num_examples=5))) == "bad_dataset"  # same
    assert parked_after("bad_dataset", first, fingerprint(CheckIn("d", num_examples=6))) == ""  # new data
    assert parked_after("bad_dataset", first, fingerprint(CheckIn("d", backends=("numpy",), num_examples=5))) == ""
    assert parked_after("bad_dataset", None, first) == ""  # never seen before (or forgotten)
    assert parked_after("", first, first) == ""


def _bad_device(fleet, model, tmp_path) -> DeviceAgent:
    """A real device whose data has the wrong number of features: it declines with bad_dataset."""
    art, manifest, _ = model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, FEATURES + 3)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=30)
    runtime = DeviceRuntime("bad", LocalData(x[:24], y[:24], x[24:], y[24:]), {manifest.model_id: art},
                            tmp_path / "devices", seed=0)
    agent = DeviceAgent(runtime, fleet.broker.connect("bad"), clock=fleet.clock)
    agent.start()
    return agent


def test_a_device_with_bad_data_is_parked_until_it_checks_in_with_something_new(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    agent = _bad_device(fleet, model, tmp_path)
    fleet.agents.append(agent)
    fleet.drain()
    c = fleet.coordinator
    assert c.eligible_devices() == ["bad"] and c.begin_round()
    fleet.drain()
    record = c.tick()
    assert record is not None and not record.committed and record.declines == {"bad": "bad_dataset"}
    assert c.eligible_devices() == [] and not c.begin_round()  # not picked again at once
    fleet.clock.advance(3600)
    agent.tick()  # it checks in again, saying what it said before
    fleet.drain()
    assert c.eligible_devices() == [] and not c.begin_round()
    assert c.registry["bad"].parked == "bad_dataset"
    paces = [m for m in fleet.wire if isinstance(m, Pace) and m.device_id == "bad"]
    assert paces and paces[-1].reason == "ineligible"  # told to come back late, like an ineligible device
    # Something new (here: a different example count) lets it be selected again.
    bad = fleet.broker.connect("bad-new")
    bad.publish(device_topic("bad", "checkin"), encode_message(CheckIn("bad", num_examples=31)))
    fleet.drain()
    assert c.eligible_devices() == ["bad"] and c.begin_round()


class Warp:
    """The coordinator's transport on a simulated clock: waiting for a message advances the
    clock instead of sleeping, and a responder answers whatever arrived before it returns."""

    def __init__(self, inner, clock, respond):
        self.inner, self.clock, self.respond = inner, clock, respond

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def receive(self, timeout=0.0):
        self.respond()
        msg = self.inner.receive(0.0)
        if msg is None and timeout:
            self.clock.advance(timeout)
        return msg


def test_abandoned_rounds_back_off_at_most_one_round_per_interval(model, tmp_path):
    """A device that declines every task (battery_low: not permanent, so never parked) on a
    loop over 20 simulated minutes: without backoff that is a round every poll."""
    fleet = make_fleet(model, tmp_path, clients_per_round=1, abandon_backoff_s=1.0, abandon_backoff_max_s=120.0)
    c = fleet.coordinator
    dev = ManualDevice(fleet, "flaky", 4)
    fleet.drain()

    def respond():
        for msg in list(dev.inbox):
            if isinstance(msg, TrainTask):
                dev.send(encode_message(Decline("flaky", msg.round_id, msg.task_id, "battery_low")))
        dev.inbox.clear()
        dev.receive()
        if any(isinstance(m, TrainTask) for m in dev.inbox):
            respond()

    c.transport = Warp(c.transport, fleet.clock, respond)
    begins, records = [], []
    loop = CoordinatorLoop(c, poll_s=0.05, on_begin=lambda m: begins.append(fleet.clock.now()),
                           on_round=records.append,
                           should_stop=lambda r: fleet.clock.now() > 1200 or len(records) > 100)  # > 100: spinning
    loop._started = True  # start() ran in make_fleet
    loop.run()
    assert records and not any(r.committed for r in records)
    assert len(begins) == len(records)
    # Round k+1 begins no sooner than abandoned_delay(k) after round k closed (it closes at
    # once: the decline comes back within the same poll).
    for k in range(1, len(begins)):
        gap = begins[k] - begins[k - 1]
        assert gap >= abandoned_delay(k, 1.0, 120.0) - 1e-9, (k, gap)
    # At most one abandoned round per backoff interval, counted over the run.
    for k, start in enumerate(begins, 1):
        within = [t for t in begins if start <= t < start + abandoned_delay(k, 1.0, 120.0)]
        assert len(within) == 1, (k, within)
    # 1 + 2 + ... + 64 = 127 s, then one every 120 s: about 16 rounds in 20 minutes.
    assert 12 <= len(records) <= 20, len(records)


def test_a_device_with_damaged_state_is_parked_until_the_file_is_moved_aside_and_it_restarts(model, tmp_path):
    """bad_state (an unreadable state.npz) is parked like bad_dataset. A fixed device restarted
    checked in exactly as before the damage, so parking it alone would have kept it out for
    good: its check-ins say `bad_state` while the file cannot be read, and stop once it can."""
    art, manifest, _ = model
    fleet = make_fleet(model, tmp_path, sizes=(30,), compression=CompressionSpec(quant_bits=8))  # lossy: a state file
    c = fleet.coordinator

    def restart() -> DeviceAgent:
        runtime = DeviceRuntime("dev0", local_data(np.random.default_rng(0), 30), {manifest.model_id: art},
                                tmp_path / "devices", seed=0)
        fleet.agents[0] = DeviceAgent(runtime, fleet.broker.connect("dev0"), clock=fleet.clock)
        fleet.agents[0].start()
        fleet.drain()
        return fleet.agents[0]

    assert c.begin_round()
    fleet.drain()
    assert c.tick().committed
    state = tmp_path / "devices" / "dev0" / manifest.model_id / "state.npz"
    good = state.read_bytes()
    state.write_bytes(b"garbage")
    assert c.begin_round()
    fleet.drain()  # it declines, then checks in at once
    record = c.tick()
    assert record is not None and record.declines == {"dev0": "bad_state"}
    assert c.eligible_devices() == [] and not c.begin_round()
    assert (c.registry["dev0"].eligible, c.registry["dev0"].reason) == (False, "bad_state")
    restart()  # not fixed: it says bad_state again, and stays out
    fleet.clock.advance(3600)
    fleet.agents[0].tick()
    fleet.drain()
    assert c.eligible_devices() == [] and not c.begin_round()
    state.rename(state.with_name("state.npz.bad"))  # what a person does (the old params are lost)
    state.write_bytes(good)
    restart()
    assert c.eligible_devices() == ["dev0"] and c.begin_round()
    fleet.drain()
    assert c.tick().committed


def test_a_bad_state_decline_parks_a_device_whose_check_ins_never_say_so(model, tmp_path):
    """An older device (no bad_state in its check-ins) is parked too, until it says something new."""
    fleet, dev, task = one_device_round(model, tmp_path, "old")
    c = fleet.coordinator
    dev.send(encode_message(Decline("old", task.round_id, task.task_id, "bad_state", "state.npz: garbage")))
    fleet.drain()
    assert c.tick().declines == {"old": "bad_state"}
    dev.check_in()  # the same check-in as before
    fleet.drain()
    assert c.registry["old"].parked == "bad_state" and c.eligible_devices() == [] and not c.begin_round()
