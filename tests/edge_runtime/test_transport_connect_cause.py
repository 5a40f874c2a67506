"""A connection attempt that fails says why: an untrusted broker certificate, a certificate that
does not name the host dialled, a closed port (a real Mosquitto over TLS on loopback); and a
run of identical failures is logged at doubling counts, a change of cause at once."""

from __future__ import annotations

import logging
import socket
import ssl
import time

import pytest

from fedge.edge_runtime.kernel.transport.connect_failure import ConnectFailures
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.broker import BrokerConfig
from fedge.tools.broker.config import TlsFiles

FAST = dict(reconnect_min_s=0.05, reconnect_max_s=0.1, connect_timeout_s=5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a broker certificate that names only `localhost` (not 127.0.0.1), and a second
    CA that signed nothing the broker holds."""
    pytest.importorskip("cryptography")
    from fedge.tools.broker.certs import create_ca, issue_server_cert

    root = tmp_path_factory.mktemp("pki-cause")
    ca = create_ca(root / "ca")
    return ca, issue_server_cert(ca, ["localhost"], root / "server"), create_ca(root / "other-ca", name="other CA")


@pytest.fixture
def tls_broker(mosquitto_factory, pki):
    ca, server, _ = pki
    tls = TlsFiles(cafile=str(ca.cert), certfile=str(server.cert), keyfile=str(server.key),
                   require_certificate=False, use_identity_as_username=False)
    return mosquitto_factory(BrokerConfig(tls=tls))


def _failing(url: str, ca_file: str, caplog, attempts: int = 1) -> tuple[MqttTransport, list[str]]:
    """A transport that tried `url` at least `attempts` times, and the fedge.mqtt lines it logged."""
    caplog.set_level(logging.INFO, logger="fedge.mqtt")
    t = MqttTransport("pi-a", MqttSettings(url=url, ca_file=ca_file, **FAST)).connect(timeout=0)
    deadline = time.monotonic() + 5
    while t.connect_failures.attempts < attempts and time.monotonic() < deadline:
        time.sleep(0.02)
    t.close()
    return t, [r.getMessage() for r in caplog.records if r.name == "fedge.mqtt"]


def test_a_ca_that_did_not_sign_the_broker_certificate_is_named(tls_broker, pki, caplog):
    _, _, other_ca = pki
    t, lines = _failing(f"mqtts://localhost:{tls_broker.port}", str(other_ca.cert), caplog)
    assert lines, "nothing logged"
    # The broker sends its chain with the CA in it: OpenSSL's words for that are these.
    assert (f"pi-a: cannot reach mqtts://localhost:{tls_broker.port}: broker TLS certificate not trusted: "
            f"certificate verify failed: self-signed certificate in certificate chain (ca_file={other_ca.cert})"
            ) in lines[0]
    assert t.connect_failures.by_cause["tls_untrusted"] >= 1


def test_a_host_the_certificate_does_not_name_is_a_hostname_mismatch(tls_broker, pki, caplog):
    ca, _, _ = pki
    t, lines = _failing(f"mqtts://127.0.0.1:{tls_broker.port}", str(ca.cert), caplog)
    assert lines, "nothing logged"
    assert "broker TLS certificate hostname mismatch: certificate is not valid for '127.0.0.1'" in lines[0]
    assert t.connect_failures.by_cause["tls_hostname"] >= 1
    # The right name, the same CA: it connects, so the failure above was the name alone.
    MqttTransport("pi-b", MqttSettings(url=f"mqtts://localhost:{tls_broker.port}", ca_file=str(ca.cert),
                                       **FAST)).connect(timeout=5).close()


def test_a_closed_port_is_refused_and_repeats_are_logged_at_doubling_counts(pki, caplog):
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ca, _, _ = pki
    t, lines = _failing(f"mqtts://127.0.0.1:{port}", str(ca.cert), caplog, attempts=9)
    assert t.connect_failures.attempts >= 9
    assert f"connection refused by 127.0.0.1:{port}" in lines[0]
    logged = [line for line in lines if "cannot reach" in line]
    attempts = [int(line.split("(attempt ")[1].split(")")[0]) for line in logged]
    assert attempts[:4] == [1, 2, 4, 8]
    assert len(logged) <= t.connect_failures.attempts.bit_length()


def test_a_change_of_cause_is_logged_at_once():
    failures = ConnectFailures(MqttSettings(url="mqtts://broker.lan:8883", ca_file="/etc/fedge/ca.crt"))
    url = "mqtts://broker.lan:8883"
    said = [failures.record(0, url, ConnectionRefusedError()) for _ in range(3)]
    assert [bool(s) for s in said] == [True, True, False]  # 1st, 2nd; the 3rd waits for the 4th
    untrusted = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    untrusted.verify_code, untrusted.verify_message = 20, "unable to get local issuer certificate"
    assert failures.record(0, url, untrusted) == (
        "cannot reach mqtts://broker.lan:8883: broker TLS certificate not trusted: certificate verify failed: "
        "unable to get local issuer certificate (ca_file=/etc/fedge/ca.crt) (attempt 4, 1 in a row with this cause)")
    assert failures.record(0, url, socket.gaierror(-2, "Name or service not known")) == (
        "cannot reach mqtts://broker.lan:8883: cannot resolve host 'broker.lan': Name or service not known "
        "(attempt 5, 1 in a row with this cause)")
    assert dict(failures.by_cause) == {**dict.fromkeys(failures.by_cause, 0), "refused": 3, "tls_untrusted": 1,
                                      "dns": 1}
    failures.connected()
    assert failures.why() == "" and failures.record(0, url, TimeoutError()).endswith("(attempt 1)")


def test_a_broker_that_refuses_the_password_is_counted_and_logged_at_doubling_counts(mosquitto_factory, tmp_path,
                                                                                    caplog):
    """The ops red team: a coordinator with a wrong [broker] password logged a warning at every
    retry (two a second) and counted none of them: fedge_broker_connect_failures_total was 0 for
    every cause. A refusing CONNACK is now the cause broker_refused, counted and logged as the
    other causes are. Retrying goes on: the broker's password file may be fixed meanwhile."""
    from fedge.tools.broker.passwd import upsert_password

    passwords = tmp_path / "passwd"
    upsert_password(passwords, "coordinator", "right")
    broker = mosquitto_factory(BrokerConfig(password_file=str(passwords)))
    caplog.set_level(logging.INFO, logger="fedge.mqtt")
    t = MqttTransport("coordinator", MqttSettings(url=f"mqtt://127.0.0.1:{broker.port}", username="coordinator",
                                                  password="wrong", **FAST)).connect(timeout=0)
    deadline = time.monotonic() + 20
    while t.connect_failures.by_cause["broker_refused"] < 9 and time.monotonic() < deadline:
        time.sleep(0.02)
    t.close()
    refused = t.connect_failures.by_cause["broker_refused"]
    assert refused >= 9
    lines = [r.getMessage() for r in caplog.records if r.name == "fedge.mqtt" and "refused" in r.getMessage()]
    assert lines[0] == (f"coordinator: cannot reach mqtt://127.0.0.1:{broker.port}: the broker refused the connection: "
                        "Not authorized (check [broker] username and password, and the broker's password file and "
                        "ACL) (attempt 1)")
    assert len(lines) <= refused.bit_length() < refused  # 1, 2, 4, 8, ...: not one a retry
