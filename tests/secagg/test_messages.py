import dataclasses
import struct
import zlib

import msgpack
import pytest

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, MESSAGE_TYPES, decode_message, encode_message
from fedge.edge_runtime.kernel.errors import MalformedPayload
from fedge.edge_runtime.kernel.secagg import messages as m

KEY = bytes(range(32))
TASK = p.TrainTask(round_id=3, task_id="t", device_id="d1", model_id="mlp", model_version=2, params=b"\x01" * 8)
SAMPLES = {
    m.SecAggTask: m.SecAggTask(TASK, m.SecAggSpec(bits=8, field_bits=18, clip_range=0.02, rotation_seed=9),
                               sharing=m.SHARING_VERSION),
    m.KeyAdvertisement: m.KeyAdvertisement("d1", 3, "t", KEY, KEY[::-1], "ab" * 32),
    m.KeyDirectory: m.KeyDirectory("d1", 3, "t", ("d1", "d2", "d3"), 2, 2, 77,
                                   (m.PeerKeys("d2", KEY, KEY, "ab" * 32),)),
    m.EncryptedShares: m.EncryptedShares("d1", 3, "t", bytes(2 * m.sealed_share_bytes(2))),
    m.ShareDelivery: m.ShareDelivery("d1", 3, "t", (m.SealedShare("d2", bytes(m.sealed_share_bytes(1))),)),
    m.MaskedInput: m.MaskedInput("d1", 3, "t", 10, 18, bytes(23), 40),
    m.UnmaskRequest: m.UnmaskRequest("d1", 3, "t", ("d1", "d2"), ("d3",), "ab" * 32),
    m.UnmaskResponse: m.UnmaskResponse("d1", 3, "t", bytes(3 * 8)),
}


def test_codes_are_new_and_every_type_has_a_sample():
    assert set(m.SECAGG_MESSAGE_TYPES) == set(range(15, 23))
    assert not set(m.SECAGG_MESSAGE_TYPES) & set(p.MESSAGE_TYPES)
    assert set(SAMPLES) == set(m.SECAGG_MESSAGE_TYPES.values())
    assert all(MESSAGE_TYPES[c] is cls for c, cls in m.SECAGG_MESSAGE_TYPES.items())


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip(cls):
    assert decode_message(encode_message(SAMPLES[cls])) == SAMPLES[cls]


def _tampered(msg, **changes) -> bytes:
    """The frame of `msg` with body fields replaced, bypassing the constructor's checks."""
    frame = encode_message(msg)
    body = msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)
    body.update(changes)
    raw = msgpack.packb(body, use_bin_type=True)
    head = frame[:6] + frame[6:7] + struct.pack("<I", len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize("cls,changes", [
    (m.KeyAdvertisement, {"cipher_public": b"short"}),
    (m.KeyAdvertisement, {"model_sha256": "ab"}),
    (m.KeyDirectory, {"threshold": 0}),
    (m.KeyDirectory, {"neighbours": 10**9}),
    (m.MaskedInput, {"data": bytes(22)}),
    (m.MaskedInput, {"field_bits": 33}),
    (m.UnmaskResponse, {"values": bytes(8 + 1)}),
    (m.EncryptedShares, {"boxes": bytes(m.sealed_share_bytes(2) + 1)}),
    (m.ShareDelivery, {"shares": [{"peer": "d2", "ciphertext": bytes(40)}]}),
    (m.ShareDelivery, {"shares": [{"peer": "d2", "ciphertext": bytes(94)}]}),
    (m.SecAggTask, {"spec": {"bits": 16, "field_bits": 8, "clip_range": 1.0, "rotation_seed": 0}}),
    (m.SecAggTask, {"spec": {"bits": 25, "field_bits": 30, "clip_range": 1.0, "rotation_seed": 0}}),
    (m.SecAggTask, {"sharing": 1}),  # the sharing scheme before packed shares: not spoken
])
def test_out_of_range_fields_are_malformed(cls, changes):
    with pytest.raises(MalformedPayload):
        decode_message(_tampered(SAMPLES[cls], **changes))


def test_constructors_refuse_what_the_decoder_refuses():
    with pytest.raises(ValueError):
        dataclasses.replace(SAMPLES[m.KeyAdvertisement], mask_public=b"x")


def test_a_secagg_task_without_the_sharing_version_is_refused():
    """A coordinator from before SHARING_VERSION 2 sends no `sharing`: its rounds would use
    shares of the same size over another field, so this build refuses the task outright."""
    frame = encode_message(SAMPLES[m.SecAggTask])
    body = msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)
    assert body.pop("sharing") == m.SHARING_VERSION
    raw = msgpack.packb(body, use_bin_type=True)
    head = frame[:6] + frame[6:7] + struct.pack("<I", len(raw)) + raw
    with pytest.raises(MalformedPayload, match="missing required field.*sharing"):
        decode_message(head + struct.pack("<I", zlib.crc32(head)))
