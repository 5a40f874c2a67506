"""tools/broker/certs.py's certificates read back with `cryptography` (mutation6-transport):
the leaf's and the CA's validity in days, the CA's path length, the CN's 64-character bound
and each leaf's extended key usage."""

from __future__ import annotations

import datetime as dt

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError

x509 = pytest.importorskip("cryptography.x509")
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

from fedge.tools.broker import certs  # noqa: E402

SKEW = dt.timedelta(minutes=5)  # not_valid_before is set 5 minutes back, for clocks a little behind


def _load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _lifetime(cert) -> dt.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    ca = certs.create_ca(d / "ca")
    return ca, certs.issue_server_cert(ca, ["broker.lan"], d / "srv"), certs.issue_client_cert(ca, "pi-1", d / "dev")


def test_validity_is_825_days_for_a_leaf_and_3650_for_the_ca(issued):
    ca, server, client = issued
    assert _lifetime(_load(ca.cert)) == dt.timedelta(days=3650) + SKEW
    for leaf in (server, client):
        assert _lifetime(_load(leaf.cert)) == dt.timedelta(days=825) + SKEW


def test_the_ca_signs_leaves_only_and_leaves_sign_nothing(issued):
    ca, server, client = issued
    bc = _load(ca.cert).extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0  # no intermediate CA below it
    for leaf in (server, client):
        assert not _load(leaf.cert).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_each_leaf_is_for_its_side_of_the_handshake(issued):
    _, server, client = issued
    for files, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        assert list(_load(files.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]


def test_a_ca_name_of_64_characters_is_the_longest(tmp_path):
    files = certs.create_ca(tmp_path / "a", name="x" * 64)
    assert _load(files.cert).subject.rfc4514_string() == "CN=" + "x" * 64
    with pytest.raises(ConfigError, match="1 to 64"):
        certs.create_ca(tmp_path / "b", name="x" * 65)

