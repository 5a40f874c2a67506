"""Mosquitto configuration: the shipped files, and runnable configs rendered from the same ACL.

`files/` holds what ops install (mosquitto-dev.conf, mosquitto-prod.conf, fedge.acl). The ACL
has one copy, `files/fedge.acl`; `write_config` puts that text next to every config it
renders, so a test broker enforces exactly what production enforces.

Global options that matter to fedge (all set in the rendered and shipped configs):
  max_packet_size   1 MiB. fedge chunks larger messages (edge_runtime/transport/chunks.py).
                    message_size_limit is never used: in 2.0.11 it breaks MQTT 5 clients.
  persistence       on, but the broker is not a durable store for fedge: a kill -9 loses
                    QoS 1 messages it already PUBACKed. Devices resend until the coordinator's
                    application-level Ack arrives, and the coordinator dedups by update_id.
Per listener: use_username_as_clientid, so no client can take over another's client id.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_SHARDS

from .foreign import refuse_foreign
from .shard_users import SHARD_USER_PREFIX, shard_acl

MAX_PACKET_SIZE = 1 << 20  # bytes, the whole MQTT packet; larger fedge messages travel as chunks
# Which way each per-device channel flows; a test checks these against protocol.DEVICE_CHANNELS
# and the shipped ACL, so a new channel cannot be added without deciding who may publish it.
DEVICE_WRITES = ("checkin", "update", "status", "fetch")
DEVICE_READS = ("task", "ack", "artifact")
COORDINATOR_USER = "coordinator"
ACL_NAME = "fedge.acl"
SHIPPED = ("mosquitto-dev.conf", "mosquitto-prod.conf", ACL_NAME)
# The first line of every config render_config writes, and the second: the sha256 of the lines
# after it. Together they are how write_config knows its own earlier copy (another port, another
# run) from one an operator edited below fedge's header, which is theirs and kept.
RENDERED = "# Rendered by tools/broker/config.py; see tools/broker/files/ for the commented originals."
BODY_DIGEST = "# sha256 of the lines below, so an edited copy is the operator's: "
# Paths the shipped configs name; `shipped_text` rewrites them for another install location.
SHIPPED_CONF_DIR = "/etc/mosquitto/fedge/"
SHIPPED_DATA_DIR = "/var/lib/mosquitto/"


@dataclass(frozen=True)
class TlsFiles:
    """One TLS listener's files (PEM paths) and how it authenticates clients."""

    cafile: str
    certfile: str
    keyfile: str
    require_certificate: bool = True  # mTLS: a client without a certificate from cafile is refused
    use_identity_as_username: bool = True  # the certificate's CN becomes the username the ACL sees

    def __post_init__(self):
        if self.use_identity_as_username and not self.require_certificate:
            raise ConfigError("use_identity_as_username needs require_certificate (no cert, no identity)")


@dataclass(frozen=True)
class BrokerConfig:
    """A single-listener broker for tests, the simulator, or a quick local run.

    Open (no password_file, no tls): anonymous clients, no ACL; loopback use only.
    Secured (password_file and/or a TLS listener with client certificates): anonymous clients
    refused, the fedge ACL enforced, client id = username.
    """

    port: int = 0  # 0: MosquittoProcess picks a free one
    data_dir: str = ""  # persistence directory; "" = MosquittoProcess's work dir
    host: str = "127.0.0.1"
    password_file: str | None = None
    acl_file: str | None = None  # None on a secured broker: the shipped fedge.acl
    tls: TlsFiles | None = None
    max_packet_size: int = MAX_PACKET_SIZE
    persistence: bool = True
    # QoS 1 messages kept for one offline client with a persistent session (0 = no limit);
    # `fedge bench ingest` raises it to queue a whole backlog for the coordinator.
    max_queued_messages: int = 1000
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")
    shards: int = 0  # a sharded fleet's K: the ACL also grants the users fedge-shard-0 .. K-1 (shard_users.py)

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"broker port {self.port} is not in 0..65535")
        if self.max_queued_messages < 0:
            raise ConfigError(f"max_queued_messages {self.max_queued_messages} must be >= 0 (0 = no limit)")
        if self.max_packet_size < 20:  # mosquitto refuses less
            raise ConfigError(f"max_packet_size {self.max_packet_size} is below Mosquitto's minimum of 20 bytes")
        if self.acl_file is not None and not self.secured:
            raise ConfigError("an ACL on a broker without passwords or client certificates would lock out every client")

    @property
    def secured(self) -> bool:
        return self.password_file is not None or (self.tls is not None and self.tls.require_certificate)

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls is not None else "mqtt"


def acl_text(shards: int = 0) -> str:
    """The fedge ACL, as shipped, with the blocks of `shards` shard workers' users."""
    return shipped_text(ACL_NAME) + shard_acl(shards)


def shipped_text(name: str, conf_dir: str | None = None, data_dir: str | None = None) -> str:
    """A shipped file's text, with its /etc/mosquitto/fedge/ and /var/lib/mosquitto/ paths
    rewritten to `conf_dir` and `data_dir` when given."""
    if name not in SHIPPED:
        raise ConfigError(f"no shipped broker file {name!r}; expected one of {SHIPPED}")
    text = resources.files("fedge.tools.broker").joinpath("files", name).read_text(encoding="utf-8")
    if conf_dir is not None:
        text = text.replace(SHIPPED_CONF_DIR, _dir(conf_dir))
    if data_dir is not None:
        text = text.replace(SHIPPED_DATA_DIR, _dir(data_dir))
    return text


def render_config(cfg: BrokerConfig, acl_path: str | None = None) -> str:
    """mosquitto.conf text for `cfg`; `acl_path` is where the ACL is (secured brokers only)."""
    if cfg.port == 0:
        raise ConfigError("render_config needs a concrete port (MosquittoProcess picks one for port 0)")
    lines = [
        RENDERED,
        "per_listener_settings false",
        f"max_packet_size {cfg.max_packet_size}",
        "max_inflight_messages 20",
        f"max_queued_messages {cfg.max_queued_messages}",
        "log_dest stderr",
        *(f"log_type {t}" for t in cfg.log_types),
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if os.geteuid() == 0:
        # As root, mosquitto drops to the `mosquitto` user, which cannot read the 0600 files in
        # a private temp dir. Staying root is acceptable for a loopback test broker only.
        lines.append("user root")
    if cfg.persistence:
        if not cfg.data_dir:
            raise ConfigError("persistence needs a data_dir")
        lines += ["persistence true", f"persistence_location {_dir(cfg.data_dir)}", "autosave_interval 60"]
    else:
        lines.append("persistence false")
    if cfg.secured:
        lines.append("allow_anonymous false")
        if cfg.password_file is not None:
            lines.append(f"password_file {cfg.password_file}")
        acl = cfg.acl_file or acl_path
        if acl is None:
            raise ConfigError("a secured broker needs an ACL file (write_config writes the shipped one)")
        lines.append(f"acl_file {acl}")
    else:
        lines.append("allow_anonymous true")
    lines.append(f"listener {cfg.port} {cfg.host}")
    if cfg.secured:
        lines.append("use_username_as_clientid true")
    if cfg.tls is not None:
        t = cfg.tls
        lines += [
            f"cafile {t.cafile}",
            f"certfile {t.certfile}",
            f"keyfile {t.keyfile}",
            "tls_version tlsv1.2",
            f"require_certificate {_bool(t.require_certificate)}",
            f"use_identity_as_username {_bool(t.use_identity_as_username)}",
        ]
    body = "\n".join(lines[1:]) + "\n"
    return f"{RENDERED}\n{BODY_DIGEST}{_sha256(body)}\n{body}"


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def write_config(cfg: BrokerConfig, directory: str | Path) -> Path:
    """Write mosquitto.conf (and, for a secured broker without its own ACL, fedge.acl) into
    `directory`; return the config's path. A file there by either name that fedge did not write
    (other bytes; for mosquitto.conf, also not an earlier render: another port, another run) is
    kept byte-identical: ForeignFile, and nothing written."""
    directory = Path(directory)
    acl_path = directory / ACL_NAME if cfg.secured and cfg.acl_file is None else None
    path = directory / "mosquitto.conf"
    text = render_config(cfg, None if acl_path is None else str(acl_path))
    files = {path: text.encode()} | ({} if acl_path is None else {acl_path: acl_text(cfg.shards).encode()})
    try:
        check_work_folder(files)
        directory.mkdir(parents=True, exist_ok=True)
        for target, data in files.items():
            target.write_bytes(data)
    except OSError as exc:  # a folder fedge may not search or write: the operator's to fix, by name
        raise ConfigError(f"cannot write the broker's config into {directory}: {exc.strerror or exc}") from exc
    return path


def check_work_folder(files: dict[Path, bytes]) -> None:
    """ForeignFile unless each of `files` (path -> the bytes to write) is absent, holds those
    bytes, or is a mosquitto.conf that render_config wrote and no one edited since (its first line is
    RENDERED, its second the sha256 of the rest)."""
    refuse_foreign(files, ours=_rendered, advice="move them, or give the broker another work folder (a "
                   "mosquitto.conf under fedge's header is fedge's only while its digest line matches: "
                   "not once edited, nor when written before fedge kept that line)")


def _rendered(path: Path, old: bytes) -> bool:
    if path.name == ACL_NAME:  # fedge's ACL for any shard count (a work folder reused with --shards changed)
        shards = old.count(f"\nuser {SHARD_USER_PREFIX}".encode())  # one user block per shard
        return shards <= MAX_SHARDS and old == acl_text(shards).encode()
    if path.name != "mosquitto.conf":
        return False
    header, digest, body = old.split(b"\n", 2) if old.count(b"\n") >= 2 else (b"", b"", b"")
    return header == RENDERED.encode() and digest == (BODY_DIGEST + _sha256(body)).encode()


def _dir(path: str | Path) -> str:
    # mosquitto joins persistence_location and the file name without a separator
    s = str(path)
    return s if s.endswith("/") else s + "/"


def _bool(value: bool) -> str:
    return "true" if value else "false"
