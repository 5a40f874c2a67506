"""Codec: round trips, every rejection path, and a fuzz loop that only sees CodecError."""

from __future__ import annotations

import dataclasses
import math
import re
import struct
import zlib

import msgpack
import numpy as np
import pytest

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, MAGIC, decode_message, encode_message
from fedge.edge_runtime.kernel.errors import (
    ChecksumMismatch,
    CodecError,
    MalformedPayload,
    PayloadTooLarge,
    TruncatedPayload,
    UnsupportedVersion,
)

HYPER = p.TaskHyper(
    epochs=3, batch_size=16, lr=0.0125, optimizer="adamw", momentum=0.9, weight_decay=1e-4,
    beta1=0.8, beta2=0.99, eps=1e-6, mu=0.01, max_steps=250, personal_head_from_global=True,
)
COMP = p.CompressionSpec(clip_norm=1.5, quant_bits=4, topk_fraction=0.1, error_feedback=False)

SAMPLES = {
    p.CheckIn: p.CheckIn(
        device_id="pi-07", backends=("ort-training", "numpy"), model_ids=("mlp", "lora-tiny"),
        eligible=False, reason="battery_low", num_examples=512,
    ),
    p.TrainTask: p.TrainTask(
        round_id=12, task_id="t-12-3", device_id="pi-07", model_id="mlp", model_version=11,
        params=bytes(range(256)) * 3, hyper=HYPER, compression=COMP, deadline_s=90.5,
        seed=2**40 + 3, correction=b"\x00\xff" * 10, manifest_sha256="ab" * 32, round_model_sha256="cd" * 32,
    ),
    p.Update: p.Update(
        device_id="pi-07", round_id=12, task_id="t-12-3", update_id="u-1", model_id="mlp",
        base_version=11, num_examples=480, payload=b"\x01\x02\x03", dense_bytes=4096,
        metrics={"loss": 0.25, "accuracy": 0.875, "seconds": 12.0}, control=b"\x04\x05" * 6,
    ),
    p.Decline: p.Decline(
        device_id="jetson-1", round_id=4, task_id="t-4-1", reason="aborted:thermal",
        detail="soc 92 C", stage="during",
    ),
    p.Ack: p.Ack(
        device_id="pi-07", round_id=12, task_id="t-12-3", update_id="u-1", accepted=False,
        reason="stale",
    ),
    p.Status: p.Status(device_id="pi-07", online=False, detail="last will ünïcode"),
    p.Pace: p.Pace(device_id="pi-07", retry_after_s=42.5, reason="not_selected"),
    p.FetchRequest: p.FetchRequest(device_id="pi-07", model_id="mlp", files=("manifest.json", "eval.onnx"),
                                   task_id="t-12-3"),
    p.ArtifactFile: p.ArtifactFile(model_id="mlp", path="eval.onnx", sha256="cd" * 32, data=b"\x08\x01" * 9, index=2,
                                   count=7),
    p.Announcement: p.Announcement(model_id="mlp", model_version=11, manifest_sha256="ab" * 32, round_id=12,
                                   state="training"),
    p.RoundModel: p.RoundModel(model_id="mlp", model_version=11, round_id=12, params=bytes(range(256)),
                               correction=b"\x01" * 8),
    p.ModelPart: p.ModelPart(sha256="ef" * 32, index=1, count=3, data=b"\x09" * 17),
    p.EvalTask: p.EvalTask(eval_id="e7", device_id="dev-3", model_id="mlp", model_version=11, round_id=12,
                           params=bytes(range(64))),
    p.EvalReport: p.EvalReport(device_id="dev-3", eval_id="e7", model_version=11, num_examples=40, has_global=True,
                               loss_global=0.71, accuracy_global=0.8, has_personal=True, loss_personal=0.4,
                               accuracy_personal=0.925),
}


def test_samples_cover_every_message_type():
    assert set(SAMPLES) == set(p.MESSAGE_TYPES.values())


def _frame(code: int, body: bytes, version: int = p.SCHEMA_VERSION) -> bytes:
    """A frame with a valid length and CRC around arbitrary body bytes."""
    head = struct.pack("<4sHBI", MAGIC, version, code, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def _map_frame(cls: type, fields: object) -> bytes:
    code = {c: k for k, c in p.MESSAGE_TYPES.items()}[cls]
    return _frame(code, msgpack.packb(fields, use_bin_type=True))


def _fields(msg: object) -> dict:
    return msgpack.unpackb(encode_message(msg)[HEADER_SIZE:-4], raw=False)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip_exact(cls):
    msg = SAMPLES[cls]
    out = decode_message(encode_message(msg))
    assert type(out) is cls
    assert out == msg
    if cls is p.TrainTask:
        assert type(out.hyper) is p.TaskHyper and type(out.compression) is p.CompressionSpec
        assert type(out.params) is bytes


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip_defaults(cls):
    required = {k: v for k, v in vars(SAMPLES[cls]).items() if k in _required(cls)}
    msg = cls(**required)
    assert decode_message(encode_message(msg)) == msg


def _required(cls: type) -> set[str]:
    return {
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


def test_frame_layout():
    data = encode_message(SAMPLES[p.Status])
    magic, version, code, n = struct.unpack_from("<4sHBI", data)
    assert (magic, version, code) == (b"FDGM", p.SCHEMA_VERSION, 6)
    assert len(data) == 11 + n + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_non_finite_floats_are_refused_both_ways():
    msg = p.Update(
        device_id="d", round_id=1, task_id="t", update_id="u", model_id="m", base_version=0,
        num_examples=1, payload=b"", metrics={"loss": math.nan, "gnorm": 1.0},
    )
    with pytest.raises(MalformedPayload, match=r"Update\.metrics\['loss'\]: nan is not a finite"):
        encode_message(msg)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(MalformedPayload, match=r"Update\.metrics\['gnorm'\]"):
            decode_message(_map_frame(p.Update, {**UPD, "metrics": {"gnorm": bad}}))



def test_a_nul_in_any_text_field_is_refused_both_ways():
    """No field means a NUL, and PostgreSQL's text cannot store one: a device's update id with a NUL
    would fail the store's write (a worker's, or the group commit's) instead of being refused."""
    with pytest.raises(MalformedPayload, match=r"Update\.update_id: contains a NUL"):
        encode_message(p.Update(device_id="d", round_id=1, task_id="t", update_id="u\x00", model_id="m",
                                base_version=0, num_examples=1, payload=b""))
    for field in ("update_id", "task_id", "model_id"):
        with pytest.raises(MalformedPayload, match=rf"Update\.{field}: contains a NUL"):
            decode_message(_map_frame(p.Update, {**UPD, field: "x\x00y"}))
    with pytest.raises(MalformedPayload, match=r"Update\.metrics"):
        decode_message(_map_frame(p.Update, {**UPD, "metrics": {"lo\x00ss": 1.0}}))

# (message, field path, values out of range, a value in range) for every bounded field kind.
_I64_OUT = (2**63, 2**64 - 1)  # msgpack itself cannot carry below -2**63
RANGE_CASES = [
    (p.CheckIn, ("num_examples",), (2**63, 2**32, -1), 2**32 - 1),
    (p.Update, ("num_examples",), (2**63, 2**32, -1), 7),
    (p.Update, ("round_id",), (*_I64_OUT, -1), 2**63 - 1),
    (p.Update, ("base_version",), (-1, 2**63), 0),
    (p.Update, ("dense_bytes",), (-5,), 0),
    (p.Decline, ("round_id",), (-1, 2**63), 3),
    (p.Ack, ("round_id",), (-1,), 3),
    (p.TrainTask, ("seed",), (-1, 2**63), 2**63 - 1),
    (p.TrainTask, ("deadline_s",), (math.nan, math.inf, -1.0, 1e10), 0.0),
    (p.TrainTask, ("hyper", "lr"), (math.nan, -0.1, math.inf), 1e-3),
    (p.TrainTask, ("hyper", "epochs"), (0, 2**63), 5),
    (p.TrainTask, ("hyper", "batch_size"), (0, 2**31), 1),
    (p.TrainTask, ("hyper", "momentum"), (1.5, -0.1), 0.99),
    (p.TrainTask, ("compression", "topk_fraction"), (1.01, -1.0, math.nan), 0.5),
    (p.TrainTask, ("compression", "quant_bits"), (0, 33), 4),
    (p.Pace, ("retry_after_s",), (math.inf, -1.0, math.nan), 1e9),
    (p.ArtifactFile, ("count",), (0,), 1),
    (p.ModelPart, ("index",), (-1,), 0),
    (p.Announcement, ("model_version",), (-1,), 0),
    (p.RoundModel, ("round_id",), (-1,), 0),
    (p.Decline, ("reason",), ("x" * 257,), "x" * 256),  # a str: at most 256 characters by default
    (p.CheckIn, ("device_id",), ("d" * 10_000,), "d" * 200),
    (p.Status, ("detail",), ("x" * (2**15 + 1),), "x" * 2**15),  # free text: up to 32 Ki characters
]


def _with(fields: dict, path: tuple, value) -> dict:
    out = dict(fields)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _with(out.get(path[0]) or {}, path[1:], value)
    return out


@pytest.mark.parametrize("cls, path, bad, good", RANGE_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_out_of_range_values_are_malformed_naming_the_field(cls, path, bad, good):
    base = _fields(SAMPLES[cls])
    where = re.escape(".".join((cls.__name__, *path)))
    for value in bad:
        with pytest.raises(MalformedPayload, match=where):
            decode_message(_map_frame(cls, _with(base, path, value)))
    msg = decode_message(_map_frame(cls, _with(base, path, good)))
    got = msg
    for name in path:
        got = getattr(got, name)
    assert got == good
    assert decode_message(encode_message(msg)) == msg  # what decodes encodes, and back


def test_int_in_float_field_is_cast_and_missing_defaults_filled():
    fields = {**_fields(SAMPLES[p.TrainTask]), "deadline_s": 30, "hyper": {"lr": 1}}
    out = decode_message(_map_frame(p.TrainTask, fields))
    assert out.deadline_s == 30.0 and type(out.deadline_s) is float
    assert out.hyper == p.TaskHyper(lr=1.0) and type(out.hyper.lr) is float


def test_bytes_like_and_buffers_accepted():
    data = encode_message(SAMPLES[p.Ack])
    assert decode_message(bytearray(data)) == SAMPLES[p.Ack]
    assert decode_message(memoryview(data)) == SAMPLES[p.Ack]
    task = p.TrainTask(
        round_id=1, task_id="t", device_id="d", model_id="m", model_version=0,
        params=bytearray(b"abc"), seed=np.int64(5),
    )
    out = decode_message(encode_message(task))
    assert out.params == b"abc" and out.seed == 5


def test_encode_rejects_non_messages_and_bad_fields():
    with pytest.raises(TypeError):
        encode_message(p.TaskHyper())
    with pytest.raises(TypeError):
        encode_message({"device_id": "x"})
    with pytest.raises(MalformedPayload, match="Status.online"):
        encode_message(p.Status(device_id="d", online=1))
    with pytest.raises(MalformedPayload, match=r"TrainTask.hyper"):
        encode_message(p.TrainTask(1, "t", "d", "m", 0, b"", hyper={"lr": 0.1}))
    with pytest.raises(MalformedPayload, match="64 bits"):
        encode_message(p.CheckIn(device_id="d", num_examples=2**70))
    with pytest.raises(MalformedPayload, match="Status"):
        encode_message(p.Status(device_id="\ud800", online=True))


def test_every_truncation_is_rejected():
    data = encode_message(SAMPLES[p.TrainTask])
    for n in range(len(data)):
        with pytest.raises(TruncatedPayload):
            decode_message(data[:n])


def test_flipped_body_byte_is_checksum_mismatch():
    data = bytearray(encode_message(SAMPLES[p.Update]))
    for i in range(HEADER_SIZE, len(data)):  # body and trailer
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ChecksumMismatch):
            decode_message(bytes(bad))


def test_wrong_version_is_unsupported():
    data = encode_message(SAMPLES[p.Ack])
    bad = data[:4] + struct.pack("<H", p.SCHEMA_VERSION + 1) + data[6:]
    with pytest.raises(UnsupportedVersion, match="schema version"):
        decode_message(bad)
    # refused before length or CRC are looked at
    with pytest.raises(UnsupportedVersion):
        decode_message(_frame(5, b"", version=0)[:HEADER_SIZE])


def test_oversize_is_refused_before_parsing():
    data = encode_message(SAMPLES[p.TrainTask])
    assert decode_message(data, max_bytes=len(data)) == SAMPLES[p.TrainTask]
    with pytest.raises(PayloadTooLarge):
        decode_message(data, max_bytes=len(data) - 1)
    with pytest.raises(PayloadTooLarge):
        decode_message(b"garbage" * 10, max_bytes=8)


def test_bad_magic_and_trailing_bytes():
    data = encode_message(SAMPLES[p.Ack])
    with pytest.raises(MalformedPayload, match="magic"):
        decode_message(b"XDGM" + data[4:])
    with pytest.raises(MalformedPayload, match="trailing"):
        decode_message(data + b"\x00")


UPD = _fields(SAMPLES[p.Update])
TASK = _fields(SAMPLES[p.TrainTask])
VALID_ACK = {"device_id": "d", "round_id": 1, "task_id": "t", "update_id": "u", "accepted": True}


@pytest.mark.parametrize(
    "cls, fields, match",
    [
        (p.Ack, {**VALID_ACK, "round_id": "1"}, r"Ack\.round_id: expected int"),
        (p.Ack, {**VALID_ACK, "round_id": 1.0}, r"Ack\.round_id"),
        (p.Ack, {**VALID_ACK, "round_id": True}, r"Ack\.round_id"),
        (p.Ack, {**VALID_ACK, "accepted": 1}, r"Ack\.accepted: expected bool"),
        (p.Ack, {**VALID_ACK, "device_id": b"d"}, r"Ack\.device_id: expected str"),
        (p.Ack, {**VALID_ACK, "reason": None}, r"Ack\.reason"),
        (p.Ack, {**VALID_ACK, "extra": 1}, r"Ack: unknown field.*extra"),
        (p.Ack, {**VALID_ACK, b"bin-key": 1}, r"Ack: unknown field"),
        (p.Ack, {k: v for k, v in VALID_ACK.items() if k != "accepted"}, r"Ack: missing.*accepted"),
        (p.CheckIn, {"device_id": "d", "backends": "ort"}, r"CheckIn\.backends: expected array"),
        (p.CheckIn, {"device_id": "d", "backends": ["ort", 3]}, r"CheckIn\.backends\[1\]"),
        (p.Update, {**UPD, "metrics": {"loss": "low"}},
         r"Update\.metrics\['loss'\]: expected float"),
        (p.Update, {**UPD, "metrics": {b"loss": 1.0}}, r"Update\.metrics"),
        (p.Update, {**UPD, "metrics": [1.0]}, r"Update\.metrics: expected map"),
        (p.Update, {**UPD, "payload": "text"}, r"Update\.payload: expected bytes"),
        (p.TrainTask, {**TASK, "hyper": [1]}, r"TrainTask\.hyper: expected map"),
        (p.TrainTask, {**TASK, "hyper": {"lr": "x"}},
         r"TrainTask\.hyper\.lr: expected float"),
        (p.TrainTask, {**TASK, "hyper": {"personal_head_from_global": 1}},
         r"TrainTask\.hyper\.personal_head_from_global: expected bool"),
        (p.TrainTask, {**TASK, "compression": {"bits": 8}},
         r"TrainTask\.compression: unknown field.*bits"),
        (p.Status, [1, 2], r"Status: body must be a map"),
        (p.Status, "status", r"Status: body must be a map"),
        (p.Status, {"device_id": "d", "online": True, "detail": msgpack.ExtType(5, b"x")},
         r"Status\.detail"),
    ],
)
def test_hand_built_bad_fields_are_malformed(cls, fields, match):
    with pytest.raises(MalformedPayload, match=match):
        decode_message(_map_frame(cls, fields))


def test_unknown_type_code_and_garbage_msgpack():
    body = msgpack.packb(VALID_ACK)
    with pytest.raises(MalformedPayload, match="type code 200"):
        decode_message(_frame(200, body))
    with pytest.raises(MalformedPayload, match="type code 0"):
        decode_message(_frame(0, body))
    for garbage in (b"", b"\xc1", b"\x85", body + b"\x00", b"\xa3ab\xff", b"\x81\x01\x02"):
        with pytest.raises(MalformedPayload):
            decode_message(_frame(5, garbage))


def test_fuzz_only_codec_errors():
    rng = np.random.default_rng(1234)
    valid = [encode_message(m) for m in SAMPLES.values()]
    for i in range(2000):
        kind = i % 4
        if kind == 0:  # random bytes
            data = rng.bytes(int(rng.integers(0, 64)))
        elif kind == 1:  # random body behind a good header and CRC
            data = _frame(int(rng.integers(0, 8)), rng.bytes(int(rng.integers(0, 48))))
        else:  # mutations of valid frames
            data = bytearray(valid[int(rng.integers(len(valid)))])
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            if kind == 3:  # re-seal the CRC so the mutation reaches msgpack and validation
                data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
            data = bytes(data)
        try:
            out = decode_message(data, max_bytes=4096)
        except CodecError:
            continue
        assert type(out) in p.MESSAGE_TYPES.values()


def test_personal_head_from_global_stays_out_of_the_frame_while_off():
    """A TaskHyper field added after devices shipped: their decoders refuse unknown fields, so
    a task carries it only when it is on (and then decodes to the same task)."""
    def body(task):
        frame = encode_message(task)
        return msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)

    off = p.TrainTask(1, "t", "d", "m", 0, b"", hyper=p.TaskHyper())
    on = dataclasses.replace(off, hyper=p.TaskHyper(personal_head_from_global=True))
    assert "personal_head_from_global" not in body(off)["hyper"]
    assert body(on)["hyper"]["personal_head_from_global"] is True
    assert decode_message(encode_message(on)) == on and decode_message(encode_message(off)) == off
    assert not p.TaskHyper().personal_head_from_global  # off by default


def _model_id_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if "pattern" in f.metadata]


NOT_MODEL_IDS = ["../victim", "..", ".", "", "a/b", "/abs", ".hidden", "a\\b", "x" * 129, "café", "abc\n", "-rf"]


def test_every_model_id_field_is_declared_as_one():
    """A str field named like a model id that the codec does not check would reopen the
    path-traversal hole (test_model_id_paths.py) for that message."""
    for cls in SAMPLES:
        named = [f.name for f in dataclasses.fields(cls) if f.name in ("model_id", "model_ids")]
        assert named == _model_id_fields(cls), cls.__name__
    assert sum(bool(_model_id_fields(cls)) for cls in SAMPLES) == 8


@pytest.mark.parametrize("bad", NOT_MODEL_IDS)
@pytest.mark.parametrize("cls", [c for c in SAMPLES if _model_id_fields(c)], ids=lambda c: c.__name__)
def test_a_model_id_that_cannot_name_a_folder_is_refused_on_decode_and_encode(cls, bad):
    name = _model_id_fields(cls)[0]
    value = (bad,) if name == "model_ids" else bad
    fields = _fields(SAMPLES[cls]) | {name: list(value) if name == "model_ids" else value}
    with pytest.raises(MalformedPayload, match=rf"{cls.__name__}\.{name}.*is not a model id"):
        decode_message(_map_frame(cls, fields))
    with pytest.raises(MalformedPayload, match="is not a model id"):
        encode_message(dataclasses.replace(SAMPLES[cls], **{name: value}))


def test_computed_and_plain_model_ids_pass_the_codec():
    for good in ("0123456789abcdef01234567", "mnist-mlp", "tiny_model.v2", "M" * 128):
        msg = dataclasses.replace(SAMPLES[p.TrainTask], model_id=good)
        assert decode_message(encode_message(msg)).model_id == good


def test_a_small_kind_past_its_size_is_refused_before_it_is_parsed():
    """A check-in of 16 MiB of one-byte items cost the coordinator 10 s and 270 MiB to decode and
    was then accepted. A frame of a small kind is now refused on its size alone (the body here
    is not even msgpack: it is never looked at)."""
    from fedge.edge_runtime.kernel.codec import SMALL_TYPES
    from fedge.edge_runtime.kernel.wire_fields import MAX_SMALL_FRAME

    code = {c: k for k, c in p.MESSAGE_TYPES.items()}
    for cls in SMALL_TYPES & set(p.MESSAGE_TYPES.values()):
        with pytest.raises(PayloadTooLarge, match=cls.__name__):
            decode_message(_frame(code[cls], b"\xc1" * MAX_SMALL_FRAME))
    assert decode_message(encode_message(SAMPLES[p.CheckIn])) == SAMPLES[p.CheckIn]  # the real thing is small


@pytest.mark.parametrize("cls,name,cap", [(p.CheckIn, "backends", 64), (p.CheckIn, "model_ids", 64),
                                          (p.FetchRequest, "files", 4096), (p.Update, "metrics", 1024)])
def test_list_fields_hold_at_most_their_cap(cls, name, cap):
    many = {f"k{i}": 1.0 for i in range(cap + 1)} if name == "metrics" else [f"m{i}" for i in range(cap + 1)]
    fields = _fields(SAMPLES[cls]) | {name: many}
    with pytest.raises(MalformedPayload, match=rf"{cls.__name__}\.{name}: {cap + 1} entries, at most {cap}"):
        decode_message(_map_frame(cls, fields))
    ok = dict(list(many.items())[:cap]) if name == "metrics" else tuple(many[:cap])
    assert len(getattr(decode_message(encode_message(dataclasses.replace(SAMPLES[cls], **{name: ok}))), name)) == cap


def test_msgpack_is_told_the_item_cap_before_it_builds_anything():
    from fedge.edge_runtime.kernel.wire_fields import MAX_ITEMS

    body = msgpack.packb({"device_id": "d", "alive": [""] * (MAX_ITEMS + 1)})
    code = {c: k for k, c in p.MESSAGE_TYPES.items()}[p.Update]
    with pytest.raises(MalformedPayload, match="not valid msgpack"):
        decode_message(_frame(code, body))
