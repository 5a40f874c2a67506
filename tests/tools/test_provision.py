"""tools.provision and the password/certificate helpers behind it."""

from __future__ import annotations

import argparse
import base64
import shutil
import stat
import subprocess
import sys

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import device_topic
from fedge.tools import provision
from fedge.tools.broker.config import BrokerConfig
from fedge.tools.broker.passwd import hash_password, read_password_file, remove_user, upsert_password, verify_password
from tests.mqtt_fixtures import RawClient

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    provision.add_arguments(parser)
    return provision.run(parser.parse_args(list(argv)))


# -- password hashes ---------------------------------------------------------------------------

def test_hash_has_mosquitto_2_shape():
    _, seven, iterations, salt, key = hash_password("secret").split("$")
    assert (seven, iterations) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12 and len(base64.b64decode(key)) == 64
    assert hash_password("secret") != hash_password("secret")  # fresh salt each time


def test_hash_is_deterministic_for_a_given_salt():
    encoded = hash_password("pw", salt=b"\x00" * 12, iterations=5)
    assert encoded == hash_password("pw", salt=b"\x00" * 12, iterations=5)
    assert verify_password("pw", encoded) and not verify_password("pW", encoded)
    assert not verify_password("pw", "$7$garbage") and not verify_password("pw", "plain")


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                    reason="needs mosquitto_passwd (apt-get install mosquitto)")
def test_hash_matches_mosquitto_passwd(tmp_path):
    """Oracle: the real tool's line, checked with our PBKDF2; and our format, field by field."""
    pw = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "s3cret"], check=True)
    theirs = read_password_file(pw)["alice"]
    assert verify_password("s3cret", theirs) and not verify_password("other", theirs)
    ours = hash_password("s3cret")
    assert [len(p) for p in ours.split("$")] == [len(p) for p in theirs.split("$")]
    assert ours.split("$")[:3] == theirs.split("$")[:3]


def test_upsert_adds_replaces_and_keeps_others(tmp_path):
    pw = tmp_path / "sub" / "passwd"
    upsert_password(pw, "a", "1")
    upsert_password(pw, "b", "2")
    upsert_password(pw, "a", "3")
    users = read_password_file(pw)
    assert list(users) == ["a", "b"]
    assert verify_password("3", users["a"]) and verify_password("2", users["b"])
    assert _mode(pw) == 0o600
    assert [p.name for p in pw.parent.iterdir()] == ["passwd"]  # no temp file left behind
    assert remove_user(pw, "a") and not remove_user(pw, "a")
    assert list(read_password_file(pw)) == ["b"]
    with pytest.raises(ConfigError):
        upsert_password(pw, "x:y", "1")


@pytest.mark.parametrize("content", [b"listener 1883\nallow_anonymous false\n",  # the broker's .conf
                                     b"alice:$7$101$c2FsdA==$a2V5\nnotes: hello\n",  # one stray line
                                     b"\xff\xfe\x00binary"])
def test_a_file_that_is_no_password_file_is_refused_and_left_as_it_was(tmp_path, content):
    """`--passwd-file broker/mosquitto-dev.conf` (a slip) once rewrote the conf as `listener 1883:`
    lines plus the new user's hash; a binary file was a UnicodeDecodeError traceback."""
    wrong = tmp_path / "mosquitto.conf"
    wrong.write_bytes(content)
    with pytest.raises(ConfigError, match="mosquitto.conf"):
        _cli("device", "--id", "dev-y", "--passwd-file", str(wrong), "--out", str(tmp_path / "creds"))
    assert wrong.read_bytes() == content
    assert not (tmp_path / "creds" / "dev-y.toml").exists()
    with pytest.raises(ConfigError, match="cannot be read"):  # a folder: IsADirectoryError before
        _cli("device", "--id", "dev-y", "--passwd-file", str(tmp_path), "--out", str(tmp_path / "creds"))


def test_comments_blank_lines_and_1x_hashes_still_read(tmp_path):
    pw = tmp_path / "passwd"
    pw.write_text("# fleet\n\nold:$6$c2FsdA==$a2V5\nnew:" + hash_password("pw") + "\n")
    assert list(read_password_file(pw)) == ["old", "new"]


def test_an_operators_comments_blank_lines_and_order_survive_upsert_and_remove(tmp_path):
    """The rewrite once kept only `user:hash` lines: an operator's comments and blank lines in a
    password file fedge did not create were lost at the first `fedge provision device`."""
    pw = tmp_path / "passwd"
    old = "old:$6$c2FsdA==$a2V5"
    pw.write_text(f"# fleet of site A\n\n{old}\n# coordinator below\nc:{hash_password('x')}\n")
    upsert_password(pw, "c", "y")
    upsert_password(pw, "dev-1", "z")
    lines = pw.read_text().splitlines()
    assert lines[:4] == ["# fleet of site A", "", old, "# coordinator below"]
    assert [line.partition(":")[0] for line in lines[4:]] == ["c", "dev-1"]
    assert verify_password("y", read_password_file(pw)["c"])
    assert remove_user(pw, "old")
    assert pw.read_text().splitlines()[:3] == ["# fleet of site A", "", "# coordinator below"]
    pw.write_text(f"{old}\n# twice\n{old}\n")  # a user listed twice: one entry is left
    upsert_password(pw, "old", "n")
    assert pw.read_text().splitlines()[1:] == ["# twice"] and verify_password("n", read_password_file(pw)["old"])


def test_another_brokers_hash_scheme_is_kept_not_refused(tmp_path):
    """Mosquitto 2.1's mosquitto_passwd hashes with argon2id by default (-H): such a file was
    refused as no password file once fedge checked the lines for $7$ or $6$ only."""
    pw = tmp_path / "passwd"
    theirs = "alice:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5"
    pw.write_text(theirs + "\n")
    upsert_password(pw, "dev-1", "pw")
    lines = pw.read_text().splitlines()
    assert lines[0] == theirs and verify_password("pw", read_password_file(pw)["dev-1"])


@pytest.mark.mosquitto
def test_broker_accepts_python_hashes(mosquitto_factory, tmp_path):
    pw = tmp_path / "passwd"
    upsert_password(pw, "pi-a", "default-iterations")
    upsert_password(pw, "pi-b", "more-iterations", iterations=1000)
    broker = mosquitto_factory(BrokerConfig(password_file=str(pw)))
    for user, password in (("pi-a", "default-iterations"), ("pi-b", "more-iterations")):
        c = RawClient(broker.host, broker.port, username=user, password=password)
        assert c.connect(), user
        c.close()
    c = RawClient(broker.host, broker.port, username="pi-a", password="more-iterations")
    assert not c.connect()


# -- device ids --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a\0b", "coordinator", "a:b", "a b", "x" * 65, "t\tab"])
def test_invalid_device_ids(bad):
    with pytest.raises(ConfigError):
        provision.validate_device_id(bad)


def test_valid_device_id():
    assert provision.validate_device_id("pi-007") == "pi-007"


# -- certificates ------------------------------------------------------------------------------

def test_certificates(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from fedge.tools.broker.certs import common_name

    ca = provision.create_ca(tmp_path / "ca")
    server = provision.issue_server_cert(ca, ["broker.lan", "10.0.0.5"], tmp_path / "srv")
    device = provision.issue_device_cert(ca, "pi-007", tmp_path / "dev")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    for files in (server, device):
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        assert _mode(files.key) == 0o600
    assert _mode(ca.key) == 0o600
    assert common_name(device.cert) == "pi-007"
    san = x509.load_pem_x509_certificate(server.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    with pytest.raises(ConfigError, match="refusing"):
        provision.issue_device_cert(ca, "pi-007", tmp_path / "dev")
    with pytest.raises(ConfigError):
        provision.issue_device_cert(ca, "coordinator", tmp_path / "dev")
    with pytest.raises(ConfigError):
        provision.create_ca(tmp_path / "ca")


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_password_identities(tmp_path):
    pw, out = tmp_path / "etc" / "passwd", tmp_path / "creds"
    assert _cli("device", "--id", "pi-007", "--passwd-file", str(pw), "--out", str(out)) == 0
    assert _cli("coordinator", "--passwd-file", str(pw), "--out", str(out), "--url", "mqtt://h:1") == 0
    users = read_password_file(pw)
    for user in ("pi-007", "coordinator"):
        creds = tomllib.loads((out / f"{user}.toml").read_text())["broker"]
        assert creds["username"] == user
        assert verify_password(creds["password"], users[user])
        assert _mode(out / f"{user}.toml") == 0o600
    assert tomllib.loads((out / "coordinator.toml").read_text())["broker"]["url"] == "mqtt://h:1"
    with pytest.raises(ConfigError, match="--force"):
        _cli("device", "--id", "pi-007", "--passwd-file", str(pw), "--out", str(out))
    old = read_password_file(pw)["pi-007"]
    assert _cli("device", "--id", "pi-007", "--passwd-file", str(pw), "--out", str(out), "--force") == 0
    assert read_password_file(pw)["pi-007"] != old  # rotated
    with pytest.raises(ConfigError):
        _cli("device", "--id", "bad/id", "--passwd-file", str(pw), "--out", str(out))
    with pytest.raises(ConfigError):
        _cli("device", "--id", "pi-008", "--out", str(out))  # neither a password file nor --cert


def test_cli_certificate_identity(tmp_path):
    pytest.importorskip("cryptography")
    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    out = tmp_path / "bundle"
    assert _cli("device", "--id", "pi-007", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(out),
                "--install-dir", "/etc/fedge") == 0
    creds = tomllib.loads((out / "pi-007.toml").read_text())["broker"]
    assert creds == {"url": "mqtts://localhost:8883", "ca_file": "/etc/fedge/ca.crt",
                     "cert_file": "/etc/fedge/pi-007.crt", "key_file": "/etc/fedge/pi-007.key"}
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "pi-007.crt", "pi-007.key", "pi-007.toml"]
    with pytest.raises(ConfigError):
        _cli("device", "--id", "pi-008", "--cert", "--out", str(out))  # no CA


def test_cli_broker_files(tmp_path):
    pytest.importorskip("cryptography")
    _cli("ca", "--out", str(tmp_path / "ca"))
    out = tmp_path / "etc"
    assert _cli("broker", "--out", str(out), "--ca-dir", str(tmp_path / "ca"), "--host", "127.0.0.1") == 0
    names = sorted(p.name for p in out.iterdir())
    # passwd: both configs name it, and Mosquitto does not start without it (a certificate-only
    # broker never had one: a helper's TLS walkthrough); empty, 0600, until a device is added
    assert names == ["ca.crt", "data", "fedge.acl", "mosquitto-dev.conf", "mosquitto-prod.conf", "passwd",
                     "server.crt", "server.key"]
    assert (out / "passwd").read_text() == "" and (out / "passwd").stat().st_mode & 0o777 == 0o600
    prod = (out / "mosquitto-prod.conf").read_text()
    assert f"certfile {out.resolve()}/server.crt" in prod and "/etc/mosquitto/fedge/" not in prod
    # The persistence directory the configs name exists, private (Mosquitto does not create it).
    assert f"persistence_location {out.resolve()}/data/" in prod
    assert (out / "data").is_dir() and (out / "data").stat().st_mode & 0o777 == 0o700


def test_cli_broker_files_staged_for_another_host_name_the_directory_to_create(tmp_path, capsys):
    out, data = tmp_path / "stage", tmp_path / "target" / "mosquitto-data"
    assert _cli("broker", "--out", str(out), "--conf-dir", str(tmp_path / "target"), "--data-dir", str(data)) == 0
    assert not data.exists() and not (tmp_path / "target").exists()  # that host's paths are not made here
    assert f"install -d -m 0700 -o mosquitto {data}" in capsys.readouterr().out
    assert f"persistence_location {data}/" in (out / "mosquitto-dev.conf").read_text()


@pytest.mark.mosquitto
def test_provisioned_credentials_work_against_the_broker(mosquitto_factory, tmp_path):
    pw, out = tmp_path / "passwd", tmp_path / "creds"
    _cli("device", "--id", "pi-007", "--passwd-file", str(pw), "--out", str(out))
    broker = mosquitto_factory(BrokerConfig(password_file=str(pw)))
    creds = tomllib.loads((out / "pi-007.toml").read_text())["broker"]
    c = RawClient(broker.host, broker.port, username=creds["username"], password=creds["password"])
    assert c.connect()
    assert c.publish(device_topic("pi-007", "update"), b"x") == 0x10  # allowed; nobody subscribed
    c.close()


@pytest.mark.mosquitto
def test_reload_admits_a_newly_provisioned_device(mosquitto_factory, tmp_path):
    pw, out = tmp_path / "passwd", tmp_path / "creds"
    upsert_password(pw, "coordinator", "x")
    broker = mosquitto_factory(BrokerConfig(password_file=str(pw)))
    _cli("device", "--id", "pi-new", "--passwd-file", str(pw), "--out", str(out))
    creds = tomllib.loads((out / "pi-new.toml").read_text())["broker"]
    before = RawClient(broker.host, broker.port, username="pi-new", password=creds["password"])
    assert not before.connect()  # the broker read its password file at start
    before.close()
    broker.reload()  # SIGHUP; no restart, no dropped sessions
    for _ in range(50):  # the signal is handled asynchronously
        c = RawClient(broker.host, broker.port, username="pi-new", password=creds["password"])
        if c.connect():
            c.close()
            break
        c.close()
    else:
        pytest.fail("pi-new still refused after SIGHUP")


# -- the operator's files --------------------------------------------------------------------------

def _tree(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_provision_never_replaces_an_operators_file_and_refuses_before_writing_anything(tmp_path):
    """A reviewing helper found each of these replaced (or, worse, replaced and then refused):
    an edited broker config, a ca.crt of the operator's own, a certificate whose key was gone."""
    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "mosquitto-dev.conf").write_text("# my edits\n")
    with pytest.raises(ConfigError, match="mosquitto-dev.conf"):
        _cli("broker", "--out", str(etc))
    assert _tree(etc) == {"mosquitto-dev.conf": b"# my edits\n"}
    (etc / "mosquitto-dev.conf").unlink()
    assert _cli("broker", "--out", str(etc)) == 0
    written = _tree(etc)
    assert _cli("broker", "--out", str(etc)) == 0  # the same content again: no change, no refusal
    assert _tree(etc) == written

    # server.key exists: refused before the configs are rewritten for the new CA's paths
    (etc / "server.key").write_text("my key")
    (etc / "mosquitto-prod.conf").write_text("# my prod edits\n")
    before = _tree(etc)
    with pytest.raises(ConfigError, match="server.key"):
        _cli("broker", "--out", str(etc), "--ca-dir", str(tmp_path / "ca"), "--host", "h")
    assert _tree(etc) == before

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ca.crt").write_text("my own CA")
    with pytest.raises(ConfigError, match="ca.crt"):
        _cli("device", "--id", "pi-1", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(creds))
    assert _tree(creds) == {"ca.crt": b"my own CA"}
    with pytest.raises(ConfigError, match="ca.crt"):
        _cli("device", "--id", "pi-1", "--passwd-file", str(tmp_path / "passwd"), "--ca-dir", str(tmp_path / "ca"),
             "--url", "mqtts://broker.lan:8884", "--out", str(creds))
    assert _tree(creds) == {"ca.crt": b"my own CA"} and not (tmp_path / "passwd").exists()
    (creds / "ca.crt").unlink()
    (creds / "pi-1.crt").write_text("a certificate without its key")
    with pytest.raises(ConfigError, match="pi-1.crt"):
        _cli("device", "--id", "pi-1", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(creds))
    assert _tree(creds) == {"pi-1.crt": b"a certificate without its key"}
    assert _cli("device", "--id", "pi-1", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(creds),
                "--force") == 0
    assert (creds / "pi-1.crt").read_bytes() != b"a certificate without its key"
