"""A small X.509 CA for mutual TLS between fedge devices and Mosquitto (needs `cryptography`).

    ca/ca.crt, ca/ca.key            the CA; the broker's cafile, every client's CA file
    <name>.crt, <name>.key          a server or client certificate and its key

Client certificates carry the device id as their Common Name: with
`use_identity_as_username true` Mosquitto takes the CN as the username, which is what the
ACL's %u matches. Keys are EC P-256 (small and fast on a Pi) and are written mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedge.edge_runtime.kernel.errors import ConfigError

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept


@dataclass(frozen=True)
class CertFiles:
    """Paths of a certificate and its private key (PEM)."""

    cert: Path
    key: Path


def create_ca(directory: str | Path, *, name: str = "fedge CA", days: int = CA_DAYS,
              overwrite: bool = False) -> CertFiles:
    """Make a self-signed CA in `directory` (ca.crt, ca.key)."""
    if not 1 <= len(name) <= 64:  # X.509's upper bound for a common name
        raise ConfigError(f"CA name {name!r}: 1 to 64 characters")
    files = cert_paths(Path(directory), "ca", overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(files, cert, key)
    return files


def issue_server_cert(ca: CertFiles, hosts: Sequence[str], directory: str | Path, *, name: str = "server",
                      days: int = LEAF_DAYS, overwrite: bool = False) -> CertFiles:
    """A broker certificate for `hosts` (DNS names and/or IP addresses, all put in the SAN)."""
    sans = server_sans(hosts)
    return _issue(ca, Path(directory), name, hosts[0], sans, ExtendedKeyUsageOID.SERVER_AUTH, days, overwrite)


def server_sans(hosts: Sequence[str]) -> list:
    """The SAN entries of a server certificate for `hosts` (the first is also its CN); ConfigError
    for a name no certificate takes. `provision broker --host ''` (or a first host over 64
    characters, or a name that is not ASCII) was cryptography's ValueError traceback, after the
    broker's files were written."""
    if not hosts:
        raise ConfigError("a server certificate needs at least one hostname or IP address")
    try:
        if not all(host.strip() for host in hosts):
            raise ValueError("a host name is empty")
        x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])
        return [_san(h) for h in hosts]
    except ValueError as exc:
        raise ConfigError(f"--host {', '.join(map(repr, hosts))}: no certificate takes it ({exc}); give a DNS name "
                          "(ASCII, the first at most 64 characters) or an IP address") from None


def issue_client_cert(ca: CertFiles, common_name: str, directory: str | Path, *, name: str | None = None,
                      days: int = LEAF_DAYS, overwrite: bool = False) -> CertFiles:
    """A client certificate whose CN (= the broker username) is `common_name`."""
    return _issue(ca, Path(directory), name or common_name, common_name, [], ExtendedKeyUsageOID.CLIENT_AUTH,
                  days, overwrite)


def common_name(cert_path: str | Path) -> str:
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _issue(ca: CertFiles, directory: Path, name: str, cn: str, sans: list, usage, days: int,
           overwrite: bool) -> CertFiles:
    files = cert_paths(directory, name, overwrite)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                     content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write(files, builder.sign(ca_key, hashes.SHA256()), key)
    return files


def _san(host: str):
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def cert_paths(directory: Path, name: str, overwrite: bool) -> CertFiles:
    """<name>.crt and <name>.key in directory; ConfigError if either exists, unless overwrite."""
    files = CertFiles(directory / f"{name}.crt", directory / f"{name}.key")
    if not overwrite and files.key.exists():
        raise ConfigError(f"{files.key} exists; refusing to replace a private key (pass overwrite to re-issue)")
    if not overwrite and files.cert.exists():  # a certificate without its key is still someone's file
        raise ConfigError(f"{files.cert} exists; refusing to replace it (pass overwrite to re-issue)")
    return files


def _write(files: CertFiles, cert, key) -> None:
    files.key.parent.mkdir(parents=True, exist_ok=True)
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    files.key.unlink(missing_ok=True)  # os.open's mode only applies to a new file
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem_key)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
