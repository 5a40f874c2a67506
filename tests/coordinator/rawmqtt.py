"""A minimal MQTT 3.1.1 client on a plain socket, for what paho will not do: send a PUBLISH of
an exact size. CONNECT, PUBLISH and the packets read back, nothing more."""

from __future__ import annotations

import socket
import struct


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def publish_packet(topic: str, size: int, fill: bytes = b"G", packet_id: int = 1) -> bytes:
    """A QoS 1 PUBLISH to `topic` of exactly `size` bytes in all, its payload `fill` repeated."""
    head = _str(topic) + struct.pack(">H", packet_id)
    for length_bytes in range(1, 5):
        payload = size - 1 - length_bytes - len(head)
        if payload >= 0 and len(_varint(len(head) + payload)) == length_bytes:
            return _packet(0x32, head + (fill * (payload // len(fill) + 1))[:payload])
    raise ValueError(f"no PUBLISH to {topic!r} is {size} bytes long")


class RawMqtt:
    """One MQTT 3.1.1 connection, clean session, logged in as `username`."""

    def __init__(self, host: str, port: int, username: str, password: str, timeout_s: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        flags = 0xC2  # username, password, clean session
        body = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", 60) + _str(username) * 2 + _str(password)
        self.sock.sendall(_packet(0x10, body))
        kind, rest = self.read()
        if kind != 0x20 or rest[1] != 0:
            raise ConnectionError(f"CONNACK {rest!r}")

    def send(self, packet: bytes) -> None:
        """Send a packet; ConnectionError if the broker has cut the link."""
        self.sock.sendall(packet)

    def read(self) -> tuple[int, bytes]:
        """(first byte, the rest) of the next packet; ConnectionError when the broker closed the link."""
        first = self._exact(1)[0]
        n, shift = 0, 0
        while True:
            b = self._exact(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return first, self._exact(n)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = self.sock.recv(n - len(buf))
            if not got:
                raise ConnectionError("the broker closed the link")
            buf += got
        return buf

    def close(self) -> None:
        self.sock.close()
