"""Pytest fixtures that run a real Mosquitto on a free loopback port, and a raw paho client.

    mosquitto             an open broker (anonymous, no ACL), like `fedge simulate` starts
    mosquitto_secured     passwords (hashed in Python) + the shipped fedge ACL; users
                          coordinator, pi-a, pi-b (SecuredBroker.client(user) connects one)
    mosquitto_mtls        mutual TLS with certificates from a throwaway CA; CN = username
    mosquitto_factory     start(config) -> MosquittoProcess, for custom configs and fault tests

Each broker is a child process stopped by pid at teardown. Without a mosquitto binary the
tests skip with the package to install, unless FEDGE_REQUIRE_MOSQUITTO=1 (CI), where they
fail. Tests using these fixtures get the `mosquitto` marker automatically.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedge.tools.broker.config import COORDINATOR_USER, BrokerConfig, TlsFiles
from fedge.tools.broker.passwd import generate_password, upsert_password
from fedge.tools.broker.process import INSTALL_HINT, SBIN_MOSQUITTO, MosquittoProcess, find_mosquitto

MOSQUITTO_FIXTURES = ("mosquitto", "mosquitto_secured", "mosquitto_mtls", "mosquitto_factory", "mosquitto_binary")
DEVICES = ("pi-a", "pi-b")
TIMEOUT_S = 5.0


class RawClient:
    """paho (CallbackAPIVersion.VERSION2, MQTT 5) with its callbacks turned into a queue and
    return values, so a test can ask the broker one thing at a time."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 client_id: str = "", tls: tuple[Path, Path | None, Path | None] | None = None,
                 will_topic: str | None = None):
        self.host, self.port = host, port
        self.messages: queue.Queue = queue.Queue()  # (topic, payload, retain)
        self.qos: list[int] = []  # the QoS each of those messages came at, in arrival order
        self.connack_code: int | None = None
        self.connack_properties = None
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._acks: dict[int, int] = {}  # mid -> reason code (PUBACK / first SUBACK code)
        self._acked = threading.Condition()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(60, 60)  # a refused client must not retry during the test
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            c.tls_set(ca_certs=str(ca), certfile=cert and str(cert), keyfile=key and str(key))
        if will_topic is not None:
            c.will_set(will_topic, b"offline", qos=1)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = lambda _c, _u, mid, rc, _p: self._ack(mid, rc.value)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self._ack(mid, [r.value for r in rcs])
        self.paho = c

    def connect(self, timeout_s: float = TIMEOUT_S) -> bool:
        """True on a successful CONNACK; False if refused (connack_code) or cut off (error)."""
        try:
            self.paho.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:  # a TLS refusal can surface here...
            self.error = exc
            return False
        self.paho.loop_start()
        for _ in range(int(timeout_s / 0.01)):
            if self.connected.is_set() or self.disconnected.is_set():  # ...or as a dropped link
                break
            self.connected.wait(0.01)
        return self.connack_code == 0

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Reason codes from the SUBACK (granted QoS, or >= 0x80 if refused)."""
        rc, mid = self.paho.subscribe(topic, qos=qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(rc)
        return self._wait_ack(mid)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """The PUBACK reason code (0 = accepted, 135 = not authorized)."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
        return self._wait_ack(info.mid)

    def expect(self, timeout_s: float = TIMEOUT_S) -> tuple[str, bytes, bool]:
        """The next message; fails the test if none comes in time."""
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"no message within {timeout_s} s")

    def received(self) -> list[tuple[str, bytes, bool]]:
        """Everything queued so far, without waiting."""
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def drop(self) -> None:
        """Cut the TCP link without DISCONNECT, so the broker publishes the will."""
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def _on_message(self, _c, _u, m) -> None:
        self.qos.append(m.qos)  # first: a test that has the message finds its QoS
        self.messages.put((m.topic, m.payload, bool(m.retain)))

    def _on_connect(self, _c, _u, _flags, rc, props) -> None:
        self.connack_code, self.connack_properties = rc.value, props
        if rc.value == 0:
            self.connected.set()
        else:
            self.paho.disconnect()  # no reconnect loop: close() returns at once

    def _on_disconnect(self, _c, _u, _flags, _rc, _props) -> None:
        self.disconnected.set()
        if not self.connected.is_set():
            self.paho.disconnect()

    def _ack(self, mid: int, code) -> None:
        with self._acked:
            self._acks[mid] = code
            self._acked.notify_all()

    def _wait_ack(self, mid: int):
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, timeout=TIMEOUT_S):
                pytest.fail(f"no acknowledgement for message {mid} within {TIMEOUT_S} s")
            return self._acks.pop(mid)


@dataclass
class SecuredBroker:
    """A broker with passwords and the fedge ACL; `client(user)` makes a connected RawClient."""

    process: MosquittoProcess
    passwd_file: Path
    passwords: dict[str, str]
    clients: list[RawClient] = field(default_factory=list)

    def client(self, username: str | None, password: str | None = None, *, client_id: str | None = None,
               connect: bool = True, will_topic: str | None = None) -> RawClient:
        pw = password if password is not None else self.passwords.get(username or "")
        c = RawClient(self.process.host, self.process.port, username=username, password=pw,
                      client_id=client_id if client_id is not None else (username or ""), will_topic=will_topic)
        self.clients.append(c)
        if connect:
            assert c.connect(), f"{username} was refused (CONNACK {c.connack_code}, error {c.error!r})"
        return c


@dataclass
class MtlsBroker:
    """A mutual-TLS broker; `certs` maps a CN to its (cert, key); `ca` is the CA certificate."""

    process: MosquittoProcess
    ca: Path
    certs: dict[str, tuple[Path, Path]]
    clients: list[RawClient] = field(default_factory=list)

    def client(self, cert: tuple[Path, Path] | None, *, client_id: str = "", connect: bool = True) -> RawClient:
        tls = (self.ca, *cert) if cert else (self.ca, None, None)
        c = RawClient(self.process.host, self.process.port, client_id=client_id, tls=tls)
        self.clients.append(c)
        if connect:
            c.connect()
        return c


def missing_tool(msg: str, require_env: str) -> None:
    """Skip for want of a broker binary, or fail where `require_env`=1 (CI) says it must run."""
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{msg} ({require_env}=1 makes this an error)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    found = find_mosquitto()
    if found is None:
        missing_tool(f"no mosquitto binary on PATH or at {SBIN_MOSQUITTO}; {INSTALL_HINT}", "FEDGE_REQUIRE_MOSQUITTO")
    return found


@pytest.fixture
def mosquitto_factory(mosquitto_binary, tmp_path):
    """start(config=None, **kwargs) -> a running MosquittoProcess, stopped at teardown."""
    started: list[MosquittoProcess] = []

    def start(config: BrokerConfig | None = None, **kwargs) -> MosquittoProcess:
        broker = MosquittoProcess(config, workdir=tmp_path / f"broker{len(started)}", binary=mosquitto_binary,
                                  **kwargs)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory) -> MosquittoProcess:
    return mosquitto_factory()


@pytest.fixture
def mosquitto_secured(mosquitto_factory, tmp_path):
    passwd = tmp_path / "passwd"
    passwords = {user: generate_password() for user in (COORDINATOR_USER, *DEVICES)}
    for user, password in passwords.items():
        upsert_password(passwd, user, password)
    broker = SecuredBroker(mosquitto_factory(BrokerConfig(password_file=str(passwd))), passwd, passwords)
    yield broker
    for c in broker.clients:
        c.close()


@pytest.fixture(scope="session")
def mtls_material(tmp_path_factory):
    """A CA, a server cert for 127.0.0.1, client certs for coordinator, pi-a, pi-b, and a
    pi-a cert from a second CA the broker does not trust."""
    pytest.importorskip("cryptography")
    from fedge.tools.broker.certs import create_ca, issue_client_cert, issue_server_cert

    root = tmp_path_factory.mktemp("pki")
    ca = create_ca(root / "ca")
    server = issue_server_cert(ca, ["127.0.0.1", "localhost"], root / "server")
    certs = {cn: issue_client_cert(ca, cn, root / "clients") for cn in (COORDINATOR_USER, *DEVICES)}
    rogue = issue_client_cert(create_ca(root / "rogue-ca"), "pi-a", root / "rogue")
    return ca, server, {cn: (f.cert, f.key) for cn, f in certs.items()}, (rogue.cert, rogue.key)


@pytest.fixture
def mosquitto_mtls(mosquitto_factory, mtls_material):
    ca, server, certs, _ = mtls_material
    tls = TlsFiles(cafile=str(ca.cert), certfile=str(server.cert), keyfile=str(server.key))
    broker = MtlsBroker(mosquitto_factory(BrokerConfig(tls=tls)), ca.cert, certs)
    yield broker
    for c in broker.clients:
        c.close()


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses a broker fixture, so `-m "not mosquitto"` deselects it."""
    for item in items:
        if set(getattr(item, "fixturenames", ())) & set(MOSQUITTO_FIXTURES):
            item.add_marker(pytest.mark.mosquitto)
