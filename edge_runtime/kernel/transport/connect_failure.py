"""Why a connection attempt to the broker failed, in words an operator acts on (pure).

paho's network thread catches the OSError of a failed attempt and tells its owner only that
one failed (on_connect_fail takes no error), so paho_client.py keeps the exception and this
module names it: a `kind` from a fixed set (CAUSES: a metric label, and what tells one
failure from the next) and a `text` for the log. ConnectFailures decides which attempts are
worth a log line: the first, each change of cause, then a streak's 2nd, 4th, 8th, ...
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from dataclasses import dataclass

from ..flood import doubling
from .settings import MqttSettings

# What a failed attempt is counted as. tls_handshake: a TLS failure other than the broker's
# certificate (a plain port, no shared protocol version); unknown: paho gave no exception;
# broker_refused: the broker answered with a refusing CONNACK (credentials, client id, ACL).
CAUSES = ("tls_untrusted", "tls_hostname", "tls_handshake", "refused", "dns", "timeout", "other", "unknown",
          "broker_refused")

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the chain is
# trusted, but the certificate does not name the host we dialled.
_NAME_MISMATCH = {62, 64}


@dataclass(frozen=True)
class ConnectCause:
    kind: str  # one of CAUSES
    text: str  # one line, for the log and for connect()'s error


def describe(exc: BaseException | None, host: str, port: int, ca_file: str = "") -> ConnectCause:
    """Name the failure `exc` of one attempt to reach host:port."""
    where = f"{host}:{port}"
    if exc is None:
        return ConnectCause("unknown", f"connection to {where} failed (paho gave no cause)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _NAME_MISMATCH:
            return ConnectCause("tls_hostname", f"broker TLS certificate hostname mismatch: certificate is not valid "
                                f"for {host!r}; connect by a name the certificate lists, or reissue it")
        ca = ca_file or "the system's default CAs"
        return ConnectCause("tls_untrusted", f"broker TLS certificate not trusted: certificate verify failed: "
                            f"{exc.verify_message or exc.reason or exc} (ca_file={ca})")
    if isinstance(exc, ssl.SSLError):  # before OSError: every SSLError is one
        return ConnectCause("tls_handshake", f"TLS handshake with {where} failed: {exc.reason or exc} "
                            "(is that port a TLS listener?)")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectCause("refused", f"connection refused by {where} (is the broker running and listening there?)")
    if isinstance(exc, socket.gaierror):
        return ConnectCause("dns", f"cannot resolve host {host!r}: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError too: TCP connect or TLS handshake
        return ConnectCause("timeout", f"no answer from {where} in time ({str(exc) or 'timed out'}); is a firewall "
                            "dropping it?")
    return ConnectCause("other", f"cannot connect to {where}: {type(exc).__name__}: {exc}")


class ConnectFailures:
    """Failed attempts by cause since creation (`by_cause`), and the current run of them:
    `record` says which attempt to log, so a broker away for hours costs a few lines."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.by_cause: Counter[str] = Counter(dict.fromkeys(CAUSES, 0))
        self.last: ConnectCause | None = None  # the latest attempt's cause, until a connection succeeds
        self.attempts = 0  # failed attempts since the last success
        self._streaks: dict[str, tuple[str, int]] = {}  # endpoint -> (cause text, attempts in a row with it)

    def record(self, node: int, endpoint: str, exc: BaseException | None) -> str | None:
        """Count one failed attempt at settings.endpoints()[node] (URL `endpoint`), failed by
        `exc`. Returns the line to log when it deserves one: the first attempt, one whose cause
        differs from the last at that endpoint, or the 2nd, 4th, 8th, ... in a row; else None."""
        nodes = self.settings.endpoints()
        host, port, _ = nodes[node % len(nodes)]
        return self._count(endpoint, describe(exc, host, port, self.settings.ca_file))

    def refused(self, endpoint: str, reason: str) -> str | None:
        """Count one attempt the broker at `endpoint` refused by its CONNACK (`reason`, paho's words);
        the line to log as `record` decides. A wrong password once logged a warning at every retry
        and counted nowhere (the ops red team: 2 lines a second, every cause 0 on /metrics)."""
        return self._count(endpoint, ConnectCause("broker_refused", f"the broker refused the connection: {reason} "
                                                  "(check [broker] username and password, and the broker's password "
                                                  "file and ACL)"))

    def _count(self, endpoint: str, cause: ConnectCause) -> str | None:
        self.last = cause
        self.by_cause[cause.kind] += 1
        self.attempts += 1
        text, n = self._streaks.get(endpoint, ("", 0))
        n = n + 1 if text == cause.text else 1  # keyed by endpoint: a cluster's nodes fail in turn
        self._streaks[endpoint] = (cause.text, n)
        if not doubling(n):
            return None
        streak = f", {n} in a row with this cause" if n != self.attempts else ""  # a cluster, or a changed cause
        return f"cannot reach {endpoint}: {cause.text} (attempt {self.attempts}{streak})"

    def why(self) -> str:
        """': <cause>' of the last failed attempt, for an error that says there is no link; '' if none failed since."""
        last = self.last  # once: paho's thread may clear it meanwhile
        return f": {last.text}" if last else ""

    def connected(self) -> None:
        """The link is up: the next failure starts a new run and is logged."""
        self.last, self.attempts = None, 0
        self._streaks.clear()
