"""docs/PROTOCOL.md followed as an outsider would: every frame here is built and read by hand
with struct, zlib, msgpack and numpy, exactly as the document describes, never with fedge's own
codec. A real coordinator must accept the hand-built Update, and the delta it decodes and adds
must be the one meant (sign: new − old; scale: fp32 values as they are, scale field 0). Then
the document's claims about what is refused (a non-zero fp32 scale, a missing tensor, zero
examples) and about resends (the same bytes again: accepted as a duplicate) are checked the same way."""

from __future__ import annotations

import struct
import zlib

import msgpack
import numpy as np
import pytest

from fedge.coordinator.validation import decode_delta
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from tests.coordinator.fleet import make_fleet
from tests.tiny_model import build_tiny_model

CHECKIN, TRAIN_TASK, UPDATE, ACK = 1, 2, 3, 5  # the doc's message type table
ROOT = "fedge/v1/devices"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


# ---- the message frame, by hand: b"FDGM", u16 version, u8 type, u32 n, msgpack body, u32 crc32 of all before

def frame(code: int, body: dict) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    head = b"FDGM" + struct.pack("<HBI", 1, code, len(packed))
    return head + packed + struct.pack("<I", zlib.crc32(head + packed))


def unframe(data: bytes) -> tuple[int, dict]:
    magic, version, code, n = struct.unpack_from("<4sHBI", data)
    assert (magic, version, len(data)) == (b"FDGM", 1, 11 + n + 4)
    assert struct.unpack_from("<I", data, 11 + n)[0] == zlib.crc32(data[: 11 + n])
    return code, msgpack.unpackb(data[11 : 11 + n], raw=False)


# ---- the update payload, by hand: b"FDGU", u8 2, u16 count, per tensor ..., u32 crc32

def tensor_head(name: str, bits: int, shape, coding: int, scale: float, count: int) -> bytes:
    raw = name.encode()
    return (struct.pack("<H", len(raw)) + raw + struct.pack("<BB", bits, len(shape))
            + struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<BfI", coding, scale, count))


def payload(parts: list[bytes]) -> bytes:
    body = b"FDGU" + struct.pack("<BH", 2, len(parts)) + b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def dense_fp32(tensors: dict[str, np.ndarray], scale: float = 0.0) -> bytes:
    return payload([tensor_head(n, 32, t.shape, 0, scale, t.size) + t.astype("<f4").tobytes()
                    for n, t in sorted(tensors.items())])


def read_dense_fp32(data: bytes) -> dict[str, np.ndarray]:
    assert data[:5] == b"FDGU\x02" and struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    (count,), at, out = struct.unpack_from("<H", data, 5), 7, {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, at)
        name = data[at + 2 : at + 2 + name_len].decode()
        at += 2 + name_len
        bits, ndim = struct.unpack_from("<BB", data, at)
        shape = struct.unpack_from(f"<{ndim}I", data, at + 2)
        coding, scale, n = struct.unpack_from("<BfI", data, at + 2 + 4 * ndim)
        at += 2 + 4 * ndim + 9
        assert (bits, coding, scale) == (32, 0, 0.0)
        out[name] = np.frombuffer(data, "<f4", n, at).reshape(shape)
        at += 4 * n
    assert at == len(data) - 4
    return out


class Outsider:
    """A device client written from the document: it talks to the broker directly."""

    def __init__(self, fleet, device_id: str):
        self.fleet, self.id = fleet, device_id
        self.link = fleet.broker.connect(device_id)
        for channel in ("task", "ack"):
            self.link.subscribe(f"{ROOT}/{device_id}/{channel}")
        self.inbox: list[tuple[int, dict]] = []

    def publish(self, channel: str, data: bytes) -> None:
        self.link.publish(f"{ROOT}/{self.id}/{channel}", data, qos=1)
        self.fleet.drain()

    def read(self, code: int) -> list[dict]:
        while (msg := self.link.receive(0.0)) is not None:
            self.inbox.append(unframe(msg.payload))
        return [body for c, body in self.inbox if c == code]

    def update(self, task: dict, update_id: str, data: bytes, num_examples: int = 9) -> bytes:
        return frame(UPDATE, {"device_id": self.id, "round_id": task["round_id"], "task_id": task["task_id"],
                              "update_id": update_id, "model_id": task["model_id"],
                              "base_version": task["model_version"], "num_examples": num_examples, "payload": data})


def _round(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    me = Outsider(fleet, "outsider")
    me.publish("checkin", frame(CHECKIN, {"device_id": me.id, "eligible": True, "num_examples": 9}))
    assert fleet.coordinator.begin_round()
    fleet.drain()
    (task,) = me.read(TRAIN_TASK)
    return fleet, me, task, read_dense_fp32(task["params"])


def test_a_hand_built_dense_update_is_accepted_and_adds_new_minus_old(model, tmp_path):
    fleet, me, task, old = _round(model, tmp_path)
    rng = np.random.default_rng(3)
    trained = {n: (v + rng.normal(scale=0.05, size=v.shape)).astype(np.float32) for n, v in old.items()}
    delta = {n: trained[n] - old[n] for n in old}  # the doc: new − old
    data = dense_fp32(delta)
    update = me.update(task, "first", data)

    me.publish("update", update)
    (ack,) = me.read(ACK)
    assert (ack["accepted"], ack["reason"], ack["update_id"]) == (True, "", "first")
    shapes = {n: v.shape for n, v in old.items()}
    admitted = decode_delta(data, shapes)  # the coordinator's one decoder of update frames
    assert {n: a.tobytes() for n, a in admitted.items()} == {n: d.tobytes() for n, d in delta.items()}

    me.publish("update", update)  # a resend, as the doc asks until the Ack: counted once
    assert [(a["accepted"], a["reason"]) for a in me.read(ACK)][1:] == [(True, "duplicate")]

    record = fleet.coordinator.tick()
    assert record is not None and record.committed
    for name, value in fleet.coordinator.state.params.items():  # one device: the mean is its delta
        np.testing.assert_allclose(value, trained[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fault, reason", [("fp32_scale_1", "bad_shape"), ("tensor_missing", "bad_shape"),
                                           ("no_examples", "malformed"), ("reused_update_id", "conflicting_duplicate")])
def test_what_the_doc_says_is_refused_is_refused_with_its_reason(model, tmp_path, fault, reason):
    fleet, me, task, old = _round(model, tmp_path)
    delta = {n: np.full(v.shape, 0.01, np.float32) for n, v in old.items()}
    if fault == "reused_update_id":
        me.publish("update", me.update(task, "u", dense_fp32(delta)))
        delta = {n: 2 * d for n, d in delta.items()}
    if fault == "tensor_missing":
        delta.pop(sorted(delta)[0])
    data = dense_fp32(delta, scale=1.0 if fault == "fp32_scale_1" else 0.0)
    me.publish("update", me.update(task, "u", data, num_examples=0 if fault == "no_examples" else 9))
    assert (me.read(ACK)[-1]["accepted"], me.read(ACK)[-1]["reason"]) == (False, reason)
    assert fleet.coordinator.rejections == {reason: 1}


def test_hand_built_top_k_int8_and_4_bit_tensors_decode_to_code_times_scale():
    """The doc's sparse layout: gap varints, int8 codes, and 4-bit nibbles (code + 8, low nibble first)."""
    idx = np.array([0, 3, 200, 201], np.uint32)  # gaps 0, 2, 196, 0; 196 takes two varint bytes
    varints = bytes([0x00, 0x02, 0xC4, 0x01, 0x00])
    codes8 = np.array([-127, 5, 0, 127], np.int8)
    codes4 = np.array([-7, 3, 7], np.int8)  # odd count: a 0 pad nibble
    nibbles = (codes4 + 8).astype(np.uint8)
    packed4 = bytes([nibbles[0] | nibbles[1] << 4, nibbles[2]])
    data = payload([
        tensor_head("a", 8, (16, 16), 2, 0.5, 4) + struct.pack("<I", len(varints)) + varints + codes8.tobytes(),
        tensor_head("b", 4, (5,), 2, 0.25, 3) + struct.pack("<I", 3) + bytes([1, 0, 1]) + packed4,
        tensor_head("c", 32, (2,), 2, 0.0, 0) + struct.pack("<I", 0),  # unchanged: sparse, no entries
    ])
    got = decompress_update(decode_tensors(data, expected={"a": (16, 16), "b": (5,), "c": (2,)}))
    want_a = np.zeros(256, np.float32)
    want_a[idx] = codes8 * np.float32(0.5)
    np.testing.assert_array_equal(got["a"].ravel(), want_a)
    np.testing.assert_array_equal(got["b"], np.array([0, -7, 3, 0, 7], np.float32) * np.float32(0.25))
    np.testing.assert_array_equal(got["c"], np.zeros(2, np.float32))
