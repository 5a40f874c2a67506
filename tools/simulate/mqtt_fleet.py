"""A simulated fleet over a real MQTT broker: one thread per device agent, the coordinator
loop in the caller's thread, all on real time.

Each device is a real DeviceAgent with its own paho connection, its own Last Will and its
own durable state, driven by the same AgentLoop a board runs. Device profiles add what real
fleets do: eligibility traces (battery, charging, link, temperature) fed to the real
eligibility policy, slower compute, and devices that vanish mid-task (the link is cut
without a DISCONNECT, so the broker publishes their will) and come back later.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time

from fedge.coordinator.loop import CoordinatorLoop
from fedge.coordinator.service import coordinator_link
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.eligibility_monitor import EligibilityMonitor
from fedge.edge_runtime.kernel.clock import SystemClock
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TrainTask
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.loop import AgentLoop
from fedge.edge_runtime.task import TaskState
from fedge.tools.simulate.profiles import DeviceProfile, load_profile

from .errors import FleetNotReady
from .stragglers import StragglerPlan

log = logging.getLogger("fedge.simulate.mqtt")


class SimDeviceAgent(DeviceAgent):
    """A DeviceAgent whose profile can make it slow, or make it vanish when a task arrives, and
    that answers late when the straggler plan says so (stragglers.py)."""

    def __init__(self, *args, profile: DeviceProfile, on_vanish, rng: random.Random, plan: StragglerPlan,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.profile = profile
        self.on_vanish = on_vanish
        self.rng = rng
        self.plan = plan
        self._late: list[tuple[int, _Hold]] = []  # (round id, held answer) until that round closes

    def _run_task(self, task: TrainTask) -> None:
        if self.rng.random() < self.profile.dropout_probability:
            log.info("device %s vanishes with task %s (profile %s)", self.device_id, task.task_id, self.profile.name)
            self.on_vanish()
            return
        super()._run_task(task)

    def _train(self, task: TrainTask) -> None:
        started = time.perf_counter()
        reply_publish, self._publish = self._publish, _Hold()  # hold the answer while "computing"
        try:
            super()._train(task)
        finally:
            held, self._publish = self._publish, reply_publish
        if self.profile.compute_speed > 1.0:
            time.sleep((self.profile.compute_speed - 1.0) * (time.perf_counter() - started))
        if self.plan.is_late(task.round_id, self.device_id):
            self._late.append((task.round_id, held))
        else:
            held.release(self._publish)
            self.plan.answered(task.round_id, self.device_id, self.tasks.get(task.task_id) == TaskState.UPLOADING)

    def tick(self) -> None:
        while self._late and self.plan.may_answer(self._late[0][0]):
            _, held = self._late.pop(0)
            held.release(self._publish)
        super().tick()

    def republish_pending(self) -> int:
        if self._late:
            return 0  # a held answer is pending too: no resend may send it before its round closed
        return super().republish_pending()


class _Hold:
    """Stands in for DeviceAgent._publish and keeps what would have been published."""

    def __init__(self):
        self.calls = []

    def __call__(self, channel, payload):
        self.calls.append((channel, payload))

    def release(self, publish):
        for channel, payload in self.calls:
            publish(channel, payload)


class SimDevice:
    """One device thread: connect, run the agent loop, and after vanishing, come back later."""

    def __init__(self, setup, client, settings: MqttSettings, profile: DeviceProfile, rejoin_s: float,
                 plan: StragglerPlan):
        self.setup = setup
        self.plan = plan
        self.settings = settings
        self.profile = profile
        self.rejoin_s = rejoin_s
        self.clock = SystemClock()
        policy = setup.cfg.eligibility
        self.monitor = EligibilityMonitor(profile.trace_probe(self.clock), policy,
                                          self.clock) if profile.name != "reference" else None
        kwargs = {"eligibility": self.monitor.before, "abort_check": self.monitor.during} if self.monitor else {}
        self.runtime = setup.runtime(client, **kwargs)
        digest = hashlib.sha256(f"{setup.cfg.seed}/{client.client_id}".encode()).digest()
        self.rng = random.Random(int.from_bytes(digest[:8], "little"))
        self.loop: AgentLoop | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._main, name=f"device-{client.client_id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        while not self.stopping.is_set():
            transport = MqttTransport(self.runtime.device_id, self.settings,
                                      will=DeviceAgent.last_will(self.runtime.device_id))
            vanished = threading.Event()

            def vanish(vanished=vanished, transport=transport):  # this pass's link, not a later one
                vanished.set()
                transport.abort()  # first: the broker publishes the Last Will before a straggler fills in
                self.plan.gone(self.runtime.device_id)

            a = self.setup.cfg.agent_timings
            agent = SimDeviceAgent(self.runtime, transport, self.clock, profile=self.profile, on_vanish=vanish,
                                   rng=self.rng,
                                   plan=self.plan, checkin_s=a.checkin_s, republish_s=a.republish_s,
                                   fetch_timeout_s=a.fetch_timeout_s, upload_link=a.upload_link())
            self.loop = AgentLoop(agent, poll_s=a.poll_s)
            self.plan.back(self.runtime.device_id)
            try:
                transport.connect(timeout=0)
                self.loop.run()
            finally:
                transport.close()
            if not vanished.is_set() or self.stopping.wait(self.rejoin_s):
                return

    def stop(self) -> None:
        self.stopping.set()
        if self.loop is not None:
            self.loop.stop()


class MqttFleet:
    def __init__(self, setup, connect_timeout_s: float = 60.0):
        cfg = setup.cfg
        self.broker = None
        url = cfg.broker_url
        if url is None:
            from fedge.tools.broker import BrokerConfig, MosquittoProcess, find_mosquitto

            if find_mosquitto() is None:
                raise ConfigError("--transport mqtt needs a broker: install Mosquitto (Debian/Ubuntu: "
                                  "apt-get install mosquitto) or pass --broker mqtt://host:port")
            self.broker = MosquittoProcess(BrokerConfig(persistence=False)).start()
            url = self.broker.url
        settings = MqttSettings(url=url, session_expiry_s=600)
        try:
            link = coordinator_link(settings, setup.ccfg)
            self.coordinator = setup.coordinator(MqttTransport("coordinator", link).connect(), SystemClock())
            profiles = [load_profile(name) for name in cfg.profiles] or [DeviceProfile()]
            self.plan = StragglerPlan(cfg.seed)
            self.devices = [SimDevice(setup, client, settings, profiles[i % len(profiles)],
                                      rejoin_s=2 * setup.ccfg.round_deadline_s,
                                      plan=self.plan)
                            for i, client in enumerate(setup.data.clients)]
            self.runtimes = [d.runtime for d in self.devices]
            for device in self.devices:
                device.start()
            self.records: list = []
            self.loop = CoordinatorLoop(self.coordinator, min_devices=1, on_round=self._closed,
                                        should_stop=lambda record: True,
                                        finish_evaluation_s=10.0,  # a vanished device never answers
                                        on_begin=lambda m: self.plan.begin(m.round_id, m.selected, m.target))
            self._wait_for_check_ins(len(self.devices), connect_timeout_s)
        except BaseException:
            self.close()
            raise

    def _wait_for_check_ins(self, expected: int, timeout_s: float) -> None:
        self.coordinator.start()
        deadline = time.monotonic() + timeout_s
        while len(self.coordinator.registry) < expected and time.monotonic() < deadline:
            self.coordinator.pump(0.1)
        if len(self.coordinator.registry) < expected:
            missing = sorted({d.runtime.device_id for d in self.devices} - set(self.coordinator.registry))
            raise FleetNotReady(f"only {len(self.coordinator.registry)} of {expected} devices checked in within "
                                f"{timeout_s:g} s (missing: "
                                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}); "
                                "the broker or this machine may be overloaded: try fewer --devices")

    def _closed(self, record) -> None:
        self.plan.closed(record.round_id)
        self.records.append(record)

    def run_round(self):
        """Run the coordinator loop until one round closes (committed or abandoned)."""
        before = len(self.records)
        self.loop.run()
        if len(self.records) == before:
            if self.loop.exhausted is not None:  # the privacy budget refused the round
                return None
            raise RuntimeError("the coordinator loop stopped without closing a round")
        return self.records[-1]

    def close(self) -> None:
        for device in getattr(self, "devices", []):
            device.stop()
        for device in getattr(self, "devices", []):
            if device.thread.ident is not None:  # started
                device.thread.join(timeout=10)
        coordinator = getattr(self, "coordinator", None)
        if coordinator is not None:
            coordinator.transport.close()
        if self.broker is not None:
            self.broker.close()
