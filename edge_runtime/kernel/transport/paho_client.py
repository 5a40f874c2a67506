"""The paho-mqtt client a MqttTransport drives: MQTT 5, callback API v2, TLS and credentials
from the settings, a Last Will, a persistent session, and paho's own log lines under
fedge.mqtt.paho without the one it repeats on every pass while a link is down. paho's
network loop waits in poll() instead of select() (poll_select.py)."""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import ConfigError
from .base import Message, validate_topic
from .poll_select import install as install_poll_select
from .settings import MqttSettings

install_poll_select(paho)  # paho's loop waits in poll(), not select(): sockets past fd 1023 (poll_select.py)


class _NoIdleLoopErrors(logging.Filter):
    """paho logs an ERROR each time its loop runs without a socket, which is every pass while a
    link is down or being closed; the transport reports those states itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


_paho_log = logging.getLogger("fedge.mqtt.paho")  # paho's own lines; not why an attempt failed (_Client keeps that)
_paho_log.addFilter(_NoIdleLoopErrors())


class _Client(paho.Client):
    """paho's client, keeping why its last connection attempt failed. paho's network thread
    (loop_forever, paho 2.x) calls reconnect(), catches the OSError (an untrusted certificate,
    a refused port, an unknown host) and calls on_connect_fail with no error, logging none:
    the cause would be lost. reconnect() is public API, so overriding it touches no internals."""

    connect_error: OSError | None = None  # the last attempt's failure; None after one that got through

    def reconnect(self):
        self.connect_error = None
        try:
            return super().reconnect()
        except OSError as exc:  # ssl.SSLError and socket.gaierror are OSErrors; paho catches only those
            self.connect_error = exc
            raise

    def loop_stop(self):
        """paho's loop_stop, then the socket pair loop_start made to wake its thread: paho leaves
        those two descriptors to __del__, and a client sits in a reference cycle with its owner's
        callbacks, so a closed transport held them until a full garbage collection (hundreds in
        a test run, which with select() put later clients past descriptor 1023: poll_select.py)."""
        rc = super().loop_stop()
        if self._thread is None:  # stopped (not called from the network thread itself)
            self._pair_released = True
            self._reset_sockets(sockpair_only=True)  # what paho's __del__ does
        return rc

    _pair_released = False

    def publish(self, *args, **kwargs):
        """paho's publish, except that a publish racing loop_stop on another thread (close() or
        abort()) meets the socket pair just released: paho checks it is there, then writes to it,
        and gets None.send (AttributeError) or a closed socket (OSError). That publish is answered
        as one without a link (MQTT_ERR_NO_CONN, which MqttTransport raises as NotConnected)."""
        try:
            return super().publish(*args, **kwargs)
        except (AttributeError, OSError):
            if not self._pair_released:
                raise
            info = paho.MQTTMessageInfo(0)
            info.rc = paho.MQTTErrorCode.MQTT_ERR_NO_CONN
            return info


CALLBACKS = ("on_connect", "on_connect_fail", "on_disconnect", "on_message", "on_publish", "on_subscribe")


def make_client(client_id: str, settings: MqttSettings, will: Message | None, owner) -> tuple[_Client, str]:
    """A client set up to connect (connect_async: nothing happens until its loop starts), with
    `owner._on_connect` ... `owner._on_subscribe` as its callbacks; and the endpoint's URL.
    In on_connect_fail, `client.connect_error` is the exception that failed the attempt."""
    client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5,
                     reconnect_on_failure=True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password or None)
    _, _, tls = settings.endpoint()
    if tls:
        try:
            client.tls_set(ca_certs=settings.ca_file or None, certfile=settings.cert_file or None,
                           keyfile=settings.key_file or None, cert_reqs=ssl.CERT_REQUIRED,
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that is no cert or key
            raise ConfigError(f"broker TLS files (ca_file {settings.ca_file!r}, cert_file {settings.cert_file!r}, "
                              f"key_file {settings.key_file!r}) cannot be used: {exc}") from None
    if will is not None:
        client.will_set(validate_topic(will.topic), will.payload, qos=1, retain=will.retain)
    client.max_queued_messages_set(0)  # unbounded: the owner bounds what it publishes
    client.enable_logger(_paho_log)
    for name in CALLBACKS:
        setattr(client, name, getattr(owner, f"_{name}"))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = int(settings.session_expiry_s)
    host, port, _ = settings.endpoint()
    client.connect_async(host, port, keepalive=settings.keepalive_s, clean_start=settings.clean_start,
                         properties=props)
    return client, endpoint_url(settings, 0)


def endpoint_url(settings: MqttSettings, index: int) -> str:
    """The URL of settings.endpoints()[index], counted round-robin."""
    nodes = settings.endpoints()
    host, port, tls = nodes[index % len(nodes)]
    return f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"


def use_endpoint(client: paho.Client, settings: MqttSettings, index: int) -> str:
    """Point the client's next reconnect at endpoint `index` (round-robin over url and
    fallback_urls); its URL. Called between attempts, when paho holds no socket."""
    nodes = settings.endpoints()
    # paho's host/port setters refuse while it is CONNECTING, which is its state when a
    # connect fails; reconnect() reads these two attributes (paho 2.x), so set them directly.
    # tests/edge_runtime/test_transport_ejabberd.py fails over through this.
    client._host, client._port = nodes[index % len(nodes)][:2]
    return endpoint_url(settings, index)
