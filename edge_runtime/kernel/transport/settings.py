"""How to reach the broker: a config value that loads without importing paho."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigError


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. Loaded from a `[broker]` TOML table by device and coordinator.

    url: mqtt://host:port (plain) or mqtts://host:port (TLS). With TLS, ca_file verifies the
    broker; cert_file + key_file add a client certificate (mutual TLS).

    fallback_urls: the other nodes of a broker cluster (ejabberd; hardware/ejabberd/README.md).
    A client whose node cannot be reached tries the next one, round-robin, with the same
    backoff between attempts; it starts from `url`. The coordinator also publishes its
    retained messages through each of them, since ejabberd does not share retained messages
    between nodes (coordinator/retain_fanout.py).
    """

    url: str = "mqtt://127.0.0.1:1883"
    fallback_urls: tuple[str, ...] = ()
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 24 * 3600  # how long the broker keeps our session and queued QoS 1 messages
    clean_start: bool = False
    connect_timeout_s: float = 10.0
    op_timeout_s: float = 10.0  # subscribe/flush wait for the broker's answer this long
    reconnect_min_s: float = 0.5  # the first retry waits between half this and this (seconds), jittered
    reconnect_max_s: float = 30.0
    max_packet_size: int = 0  # 0 = what the broker announces; else also cap at this (bytes)
    max_message_bytes: int = 64 << 20  # largest message published (chunked if need be), and by default received
    # Receiving: the largest reassembled message accepted, which is also what one sender may
    # hold in incomplete chunk sets; 0 = max_message_bytes. A receiver that knows its largest
    # legitimate message sets this (the coordinator: its max_update_bytes).
    max_inbound_bytes: int = 0
    max_pending_bytes: int = 0  # all senders' incomplete chunk sets together; 0 = 4 x the inbound limit
    chunk_expiry_s: float = 120.0  # an incomplete chunk set is dropped after this

    def __post_init__(self) -> None:
        host, port, tls = self.endpoint()
        if not host or not 0 < port < 65536:
            raise ConfigError(f"broker.url {self.url!r}: need mqtt://host:port or mqtts://host:port")
        for url in self.fallback_urls:  # one TLS setup (ca, cert) serves every node
            other = _endpoint(url, "broker.fallback_urls")
            if not other[0] or not 0 < other[1] < 65536 or other[2] != tls:
                raise ConfigError(f"broker.fallback_urls {url!r}: need {'mqtts' if tls else 'mqtt'}://host:port, "
                                  f"like url {self.url!r}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("broker: cert_file and key_file go together (mutual TLS)")
        if (self.cert_file or self.ca_file) and not tls:
            raise ConfigError(f"broker: TLS files given but url {self.url!r} is not mqtts://")
        if self.max_packet_size and self.max_packet_size < 1024:
            raise ConfigError("broker.max_packet_size must be 0 (broker's value) or >= 1024 bytes")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:  # what Backoff needs; NaN fails this too
            bad = "reconnect_min_s" if not 0 < self.reconnect_min_s < math.inf else "reconnect_max_s"
            raise ConfigError(f"broker.{bad} must be > 0 and reconnect_min_s <= reconnect_max_s, got "
                              f"{self.reconnect_min_s} and {self.reconnect_max_s}")
        if not 0 <= self.keepalive_s <= 65535:  # MQTT's keep-alive is a 16-bit count of seconds; 0 = off
            raise ConfigError(f"broker.keepalive_s must be in [0, 65535], got {self.keepalive_s}")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:  # a 32-bit property in MQTT 5
            raise ConfigError(f"broker.session_expiry_s must be in [0, {0xFFFFFFFF}], got {self.session_expiry_s}")
        for name in ("connect_timeout_s", "op_timeout_s", "chunk_expiry_s"):
            value = getattr(self, name)
            if not 0 < value < math.inf:  # NaN fails this too
                raise ConfigError(f"broker.{name} must be > 0 and finite, got {value}")
        if self.max_message_bytes < 1:
            raise ConfigError("broker.max_message_bytes must be >= 1")
        for name in ("max_inbound_bytes", "max_pending_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"broker.{name} must be >= 0 (0 = from max_message_bytes)")

    @property
    def inbound_limit(self) -> int:
        """Largest reassembled message accepted, and one sender's share of reassembly memory (bytes)."""
        return self.max_inbound_bytes or self.max_message_bytes

    @property
    def pending_limit(self) -> int:
        """What all senders' incomplete chunk sets may hold together (bytes)."""
        return self.max_pending_bytes or 4 * self.inbound_limit

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, tls) from the url."""
        return _endpoint(self.url)

    def endpoints(self) -> tuple[tuple[str, int, bool], ...]:
        """(host, port, tls) of url, then of each fallback url: the order a client tries them in."""
        return tuple(_endpoint(url) for url in (self.url, *self.fallback_urls))


def _endpoint(url: str, key: str = "broker.url") -> tuple[str, int, bool]:
    raw = url if "://" in url else f"mqtt://{url}"
    parts = urlsplit(raw)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"{key} {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)  # :0 is refused, not 1883
    except ValueError:
        raise ConfigError(f"{key} {url!r}: bad port") from None
    return parts.hostname or "", port, tls
