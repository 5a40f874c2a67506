"""The broker identity a shard's worker logs in with.

A broker that sets use_username_as_clientid (the shipped configs) makes a client's id its
username, so every coordinator process logging in as `coordinator` would share one client id
and knock the others off. With [service] shard_credentials = FOLDER, the worker that wins
shard k logs in as fedge-shard-k with FOLDER/fedge-shard-k.toml (`fedge provision coordinator
--shards K` writes them): its username, password or certificate replace the [broker] table's,
whose url and tuning stay. The broker then keeps shard k's session under fedge-shard-k, the
client id the worker asks for anyway, so a spare that takes the shard takes its session too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fedge.edge_runtime.kernel.configfile import load_toml
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import shard_client_id
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

IDENTITY = ("username", "password", "cert_file", "key_file")  # replaced as a whole: no mix of two identities


def shard_identities(broker: MqttSettings, folder: str, shards: int) -> list[MqttSettings] | None:
    """Each shard's settings, read before any lease is taken so a missing file stops the worker at
    start, not after it won a shard; None without a folder (every worker logs in as [broker] says)."""
    if not folder:
        return None
    return [_identity(broker, Path(folder) / f"{shard_client_id(k)}.toml", shard_client_id(k)) for k in range(shards)]


def _identity(broker: MqttSettings, path: Path, user: str) -> MqttSettings:
    table = load_toml(path).get("broker")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [broker] table (write it with `fedge provision coordinator --shards K`)")
    if table.get("username", user) != user:  # a certificate identity has no username: its CN is the name
        raise ConfigError(f"{path}: username {table['username']!r}, expected {user!r}")
    given = {key: table.get(key, "") for key in IDENTITY}
    if given["cert_file"] and (cn := _common_name(Path(given["cert_file"]), path)) != user:
        # the broker takes the CN as the username: another shard's certificate would log this
        # worker in with that shard's rights, and it would never hear its own shard's uploads
        raise ConfigError(f"{path}: certificate {given['cert_file']} is for {cn!r}, expected {user!r}")
    if table.get("ca_file"):
        given["ca_file"] = table["ca_file"]
    try:
        return replace(broker, **given)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _common_name(cert: Path, path: Path) -> str:
    try:
        names = x509.load_pem_x509_certificate(cert.read_bytes()).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read certificate {cert}: {exc}") from None
    return str(names[0].value) if names else ""
