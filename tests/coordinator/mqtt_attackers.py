"""A coordinator and hand-driven devices over a real, secured Mosquitto (passwords and the
shipped ACL), for attacks by MQTT clients fedge did not write: raw paho, v5 or v3.1.1.

Honest devices are ManualDevices (tests/coordinator/fleet.py) on fedge's MqttTransport; an
attacker gets its own broker user (`add_user`), since the shipped configs make the username
the client id and a second login as pi-a would only knock the honest pi-a off its session."""

from __future__ import annotations

import time
from collections import defaultdict
from types import SimpleNamespace

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.async_mode.server import coordinator_class
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.transport.chunks import sender_of
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.broker.config import BrokerConfig
from fedge.tools.broker.passwd import generate_password, upsert_password
from tests.coordinator.fleet import EXACT, HYPER, NO_EVAL, ManualDevice
from tests.coordinator.test_malformed_flood_mqtt import _await_tasks as await_tasks  # noqa: F401 - for the tests
from tests.coordinator.test_malformed_flood_mqtt import _pump_until as pump_until
from tests.mqtt_fixtures import SecuredBroker
from tests.tiny_model import build_tiny_model

USERS = ("coordinator", "pi-a", "pi-b", "pi-c", "pi-d")  # pi-a, pi-b honest; pi-c, pi-d attackers


def secured_broker(mosquitto_factory, tmp_path, users=USERS) -> SecuredBroker:
    """A broker with passwords for `users` and the shipped ACL (mqtt_fixtures.mosquitto_secured,
    with more users)."""
    passwd = tmp_path / "passwd"
    passwords = {user: generate_password() for user in users}
    for user, password in passwords.items():
        upsert_password(passwd, user, password)
    return SecuredBroker(mosquitto_factory(BrokerConfig(password_file=str(passwd))), passwd, passwords)


def open_broker(process) -> SimpleNamespace:
    """What start_fleet needs of a broker without passwords or ACL (the dev config, the
    `mosquitto` fixture): any client may use any client id and any topic."""
    return SimpleNamespace(process=process, passwords=defaultdict(str))


class SecuredConnector:
    """connect(user) -> an MqttTransport logged in as `user`; what ManualDevice needs of a broker."""

    def __init__(self, secured):
        self.secured = secured
        self.open: list = []  # MqttTransports and raw paho clients, closed at the end

    def connect(self, user: str) -> MqttTransport:
        settings = MqttSettings(url=self.secured.process.url, username=user, password=self.secured.passwords[user],
                                reconnect_min_s=0.1, reconnect_max_s=0.5)
        transport = MqttTransport(user, settings).connect()
        self.open.append(transport)
        return transport

    def raw(self, user: str, protocol=mqtt.MQTTv5, will: tuple[str, bytes] | None = None) -> mqtt.Client:
        """A connected paho client as `user`, set up the way a third party might (MQTT 5 or 3.1.1);
        `will`: (topic, payload) of a retained Last Will."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=protocol)
        c.username_pw_set(user, self.secured.passwords[user])
        c.reconnect_delay_set(60, 60)
        if will is not None:
            c.will_set(*will, qos=1, retain=True)
        connected = []
        c.on_connect = lambda _c, _u, _f, rc, _p: connected.append(rc.value)
        c.connect(self.secured.process.host, self.secured.process.port, keepalive=30)
        c.loop_start()
        self.open.append(c)
        wait_for(lambda: connected, f"{user}'s CONNACK")
        assert connected == [0], f"{user} was refused: {connected}"
        return c

    def drop(self, client: mqtt.Client) -> None:
        """Cut a raw client's link without DISCONNECT: the broker publishes its will."""
        self.open.remove(client)
        client.loop_stop()
        client.socket().close()

    def close(self) -> None:
        for c in self.open:
            if isinstance(c, MqttTransport):
                c.close()
            else:
                c.disconnect()
                c.loop_stop()


def start_fleet(secured, tmp_path, devices=(("pi-a", 7), ("pi-b", 19)), **config) -> SimpleNamespace:
    """A Coordinator of the config's mode (SQLite store, `mean` aggregator: the oracle is the honest deltas' weighted
    mean) and one ManualDevice per (user, examples), all registered."""
    _, manifest, runtime = build_tiny_model(tmp_path / "artifacts")
    cfg = CoordinatorConfig(**{"clients_per_round": len(devices), "min_reports": len(devices), "over_selection": 1.0,
                               "hyper": HYPER, "compression": EXACT, "aggregator": "mean", "evaluation": NO_EVAL,
                               **config})
    broker = SecuredConnector(secured)
    coordinator = coordinator_class(cfg)(broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                              runtime.initial("shared"), cfg, store=RoundStore(tmp_path / "state.db"))
    coordinator.start()
    fleet = SimpleNamespace(broker=broker, coordinator=coordinator, runtime=runtime, manifest=manifest, config=cfg)
    fleet.devices = [ManualDevice(fleet, d, n) for d, n in devices]
    pump_until(coordinator, lambda: len(coordinator.registry) == len(devices))
    return fleet


def wait_for(done, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def queued(transport: MqttTransport, topic: str) -> int:
    """Messages from `topic`'s sender waiting in the transport's inbound queue, not yet received."""
    q = transport._queue
    with q._ready:
        return len(q._senders.get(sender_of(topic), ()))


def exported_rejections(coordinator) -> dict[str, float]:
    """fedge_rejections_total by reason, as /metrics would serve it (the reasons counted so far)."""
    text = generate_latest(coordinator.metrics.registry).decode()
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text) if f.name == "fedge_rejections"
            for s in f.samples if s.name == "fedge_rejections_total" and s.value}
