"""A device whose battery drops below policy mid-training aborts within 2 seconds and the
coordinator records the reason.

The real stack over the in-memory broker and real time: Coordinator in this thread, a
DeviceAgent training the tiny model in another, eligibility from an EligibilityMonitor on
the SystemClock. Training is made far longer than the test (only the abort can end it), the
battery drops while it runs, and the clock runs from the drop to the coordinator handling
the Decline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.eligibility import EligibilityPolicy
from fedge.edge_runtime.eligibility_monitor import EligibilityMonitor
from fedge.edge_runtime.kernel.clock import SystemClock
from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, all_devices_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.probes import FakeProbe
from fedge.tools.simulate.fact_trace import FactTrace
from fedge.tools.simulate.trace_probe import TraceProbe
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model

LIMIT_S = 2.0
# Thousands of epochs of 250 steps: minutes of training, so the task is still running
# whenever the battery drops. Only an abort (or the test's own teardown) ends it.
HYPER = TaskHyper(epochs=10_000, batch_size=8, lr=0.01)
POLICY = EligibilityPolicy(min_battery_percent=50.0)
TRACE_DROP_S = 2.0  # the trace below crosses 50% two seconds after it starts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _data(n: int = 2000) -> LocalData:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n + 20, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n + 20)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


def _fake_source(clock):
    """Battery at 90%, dropped to 20% by hand 0.3 s into training."""
    probe = FakeProbe(battery_percent=90.0, charging=False, link="wifi", metered=False)

    def drop(training_started: float) -> float:
        time.sleep(max(0.0, training_started + 0.3 - clock.now()))
        probe.set(battery_percent=20.0)
        return clock.now()

    return probe, drop


def _trace_source(clock):
    """A battery at 51% draining at 30%/min on the real clock: below 50% after 2 s."""
    probe = TraceProbe(FactTrace(battery_start_percent=51.0, drain_percent_per_min=30.0, link="wifi"), clock)

    def drop(training_started: float) -> float:
        assert training_started < probe.start + TRACE_DROP_S, "training started after the battery dropped"
        return probe.start + TRACE_DROP_S

    return probe, drop


def _abort_latency(coordinator, training: threading.Event, drop, clock) -> float:
    """Once training runs, drop the battery and pump until the coordinator has the Decline:
    the seconds from the drop to then (10 x the limit at most)."""
    assert training.wait(30.0), "the device never started training"
    dropped_at = drop(clock.now())
    while not coordinator.declines and clock.now() - dropped_at < 10 * LIMIT_S:
        coordinator.pump(0.01)
    return clock.now() - dropped_at


@pytest.mark.parametrize("source", [_fake_source, _trace_source], ids=["fake_probe", "trace_probe"])
def test_battery_drop_mid_training_aborts_within_2s_and_the_coordinator_records_why(model, tmp_path, source):
    art, manifest, runtime = model
    clock = SystemClock()
    cfg = CoordinatorConfig(clients_per_round=1, over_selection=1.0, hyper=HYPER,
                            compression=CompressionSpec(quant_bits=32))
    broker = InMemoryBroker()
    coordinator = Coordinator(broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                              runtime.initial("shared"), cfg, clock=clock)
    coordinator.start()
    spy = broker.connect("spy")
    spy.subscribe(all_devices_topic("update"))

    probe, drop = source(clock)
    monitor = EligibilityMonitor(probe, POLICY, clock, check_interval_s=0.5, name="dev0")
    training = threading.Event()
    teardown = threading.Event()
    steps_checked = [0]

    def abort_check() -> str | None:
        training.set()
        steps_checked[0] += 1
        return "test_teardown" if teardown.is_set() else monitor.during()

    device = DeviceRuntime("dev0", _data(), {manifest.model_id: art}, tmp_path / "devices",
                           eligibility=monitor.before, abort_check=abort_check)
    agent = DeviceAgent(device, broker.connect("dev0"), clock=clock)
    agent.start()  # checks in, eligible at 90% (or 51%)

    def device_loop() -> None:
        while not teardown.is_set():
            agent.poll(0.05)

    thread = threading.Thread(target=device_loop, name="dev0", daemon=True)
    thread.start()
    try:
        while coordinator.pump(0.0):
            pass
        assert coordinator.eligible_devices() == ["dev0"]
        assert coordinator.begin_round()
        latency = _abort_latency(coordinator, training, drop, clock)
    finally:
        teardown.set()
        thread.join(10.0)

    print(f"abort latency {latency:.3f} s (check interval {monitor.check_interval_s} s)")
    assert coordinator.declines == Counter({"aborted:battery_low": 1}), coordinator.declines
    assert latency < LIMIT_S, f"abort took {latency:.2f} s after the battery dropped"

    # The abort came mid-training, from a task that would otherwise have run for minutes.
    decline = [m for m in (decode_message(msg.payload) for msg in iter(lambda: spy.receive(0.0), None))
               if isinstance(m, Decline)]
    assert len(decline) == 1 and decline[0].stage == "during" and decline[0].reason == "aborted:battery_low"
    steps = int(decline[0].detail.split()[1])  # "after N steps"
    assert 0 < steps < HYPER.epochs * 250 and steps_checked[0] > steps
    assert monitor.facts.battery_percent < POLICY.min_battery_percent

    # The round's machine has the reason; with nobody left the round is abandoned and recorded.
    assert coordinator.round.machine.declined == {"dev0": "aborted:battery_low"}
    record = coordinator.tick()
    assert record is not None and not record.committed
    assert record.declines == {"dev0": "aborted:battery_low"}
    assert coordinator.history[-1] is record and coordinator.state.version == 0
    assert not thread.is_alive()


@pytest.mark.parametrize("source", [_fake_source, _trace_source], ids=["fake_probe", "trace_probe"])
def test_over_mosquitto_a_battery_drop_aborts_within_2s_and_the_coordinator_records_why(model, tmp_path, source,
                                                                                          mosquitto):
    """The same scenario on a real broker: MqttTransport on both sides, the device driven by the
    AgentLoop a board runs, the coordinator pumping its own MQTT connection."""
    from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
    from fedge.edge_runtime.kernel.transport.settings import MqttSettings
    from fedge.edge_runtime.loop import AgentLoop

    art, manifest, runtime = model
    clock = SystemClock()
    cfg = CoordinatorConfig(clients_per_round=1, over_selection=1.0, hyper=HYPER,
                            compression=CompressionSpec(quant_bits=32))
    settings = MqttSettings(url=mosquitto.url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    links = [MqttTransport("coordinator", settings).connect(), MqttTransport("spy", settings).connect()]
    coordinator = Coordinator(links[0], make_strategy("fedavg", cfg.hyper), manifest, runtime.initial("shared"), cfg,
                              clock=clock)
    spy = links[1]
    spy.subscribe(all_devices_topic("update"))

    probe, drop = source(clock)
    monitor = EligibilityMonitor(probe, POLICY, clock, check_interval_s=0.5, name="dev0")
    training = threading.Event()
    teardown = threading.Event()

    def abort_check() -> str | None:
        training.set()
        return "test_teardown" if teardown.is_set() else monitor.during()

    device = DeviceRuntime("dev0", _data(), {manifest.model_id: art}, tmp_path / "devices",
                           eligibility=monitor.before, abort_check=abort_check)
    links.append(MqttTransport("dev0", settings, will=DeviceAgent.last_will("dev0")).connect())
    loop = AgentLoop(DeviceAgent(device, links[-1], clock=clock), poll_s=0.05)
    thread = threading.Thread(target=loop.run, name="dev0", daemon=True)
    try:
        coordinator.start()
        thread.start()  # the agent checks in, eligible at 90% (or 51%)
        deadline = clock.now() + 30
        while coordinator.eligible_devices() != ["dev0"]:
            assert clock.now() < deadline, "the device did not check in"
            coordinator.pump(0.05)
        assert coordinator.begin_round()
        latency = _abort_latency(coordinator, training, drop, clock)
        assert coordinator.declines == Counter({"aborted:battery_low": 1}), coordinator.declines
        print(f"abort latency over MQTT {latency:.3f} s")
        assert latency < LIMIT_S, f"abort took {latency:.2f} s after the battery dropped"

        # The Decline on the wire says it stopped mid-training, for the battery.
        declines = []
        end = clock.now() + 10
        while not declines and clock.now() < end:
            msg = spy.receive(0.1)
            if msg is not None and isinstance(m := decode_message(msg.payload), Decline):
                declines.append(m)
        assert [(d.stage, d.reason) for d in declines] == [("during", "aborted:battery_low")]
        assert coordinator.round.machine.declined == {"dev0": "aborted:battery_low"}
        record = coordinator.tick()
        assert record is not None and not record.committed and record.declines == {"dev0": "aborted:battery_low"}
    finally:
        teardown.set()
        loop.stop()
        thread.join(10.0)
        for link in links:
            link.close()
    assert not thread.is_alive()
