"""Codec, the fields: each bounded field refuses values out of its range naming the field and
takes one in range; non-finite floats and NULs are refused both ways; hand-built fields of the
wrong type are MalformedPayload naming the field; ints in float fields are cast and missing
fields take their defaults; list fields hold at most their cap; every model-id field is
declared as one and refuses what cannot name a folder. Frames: test_codec_frames.py."""

from __future__ import annotations

import dataclasses
import math
import re

import msgpack
import pytest

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.device_folder import RESERVED
from fedge.edge_runtime.kernel.errors import MalformedPayload
from fedge.edge_runtime.kernel.wire_fields import MODEL_ID, SHA256_HEX
from tests.edge_runtime.codec_samples import SAMPLES, TASK, UPD, VALID_ACK, _fields, _map_frame


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


def _model_id_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("pattern") is MODEL_ID]


def _sha256_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("pattern") is SHA256_HEX]


# and the names the device's own folder holds beside its model folders
NOT_MODEL_IDS = ["../victim", "..", ".", "", "a/b", "/abs", ".hidden", "a\\b", "x" * 129, "café", "abc\n", "-rf",
                 *sorted(RESERVED)]


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


def test_every_sha256_field_of_the_main_protocol_is_declared_as_one():
    """A digest no file can have is refused on decode (a device once waited out its fetch timeout
    for it); the secure-aggregation messages check theirs in __post_init__ (non-empty there)."""
    for cls in SAMPLES:
        if cls.__module__ == p.__name__:
            named = [f.name for f in dataclasses.fields(cls) if f.name.endswith("sha256")]
            assert named == _sha256_fields(cls), cls.__name__
    assert sum(bool(_sha256_fields(cls)) for cls in SAMPLES) == 4


@pytest.mark.parametrize("bad", ["zz", "AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, " " + "ab" * 32])
@pytest.mark.parametrize("cls", [c for c in SAMPLES if _sha256_fields(c)], ids=lambda c: c.__name__)
def test_a_sha256_no_file_can_have_is_refused_on_decode_and_encode(cls, bad):
    for name in _sha256_fields(cls):
        fields = _fields(SAMPLES[cls]) | {name: bad}
        with pytest.raises(MalformedPayload, match=rf"{cls.__name__}\.{name}.*is not a sha256"):
            decode_message(_map_frame(cls, fields))
        with pytest.raises(MalformedPayload, match="is not a sha256"):
            encode_message(dataclasses.replace(SAMPLES[cls], **{name: bad}))
        for good in ("", "0123456789abcdef" * 4):
            assert getattr(decode_message(_map_frame(cls, _fields(SAMPLES[cls]) | {name: good})), name) == good


def test_computed_and_plain_model_ids_pass_the_codec():
    for good in ("0123456789abcdef01234567", "mnist-mlp", "tiny_model.v2", "M" * 128):
        msg = dataclasses.replace(SAMPLES[p.TrainTask], model_id=good)
        assert decode_message(encode_message(msg)).model_id == good


@pytest.mark.parametrize("cls,name,cap", [(p.CheckIn, "backends", 64), (p.CheckIn, "model_ids", 64),
                                          (p.FetchRequest, "files", 4096), (p.Update, "metrics", 1024)])
def test_list_fields_hold_at_most_their_cap(cls, name, cap):
    many = {f"k{i}": 1.0 for i in range(cap + 1)} if name == "metrics" else [f"m{i}" for i in range(cap + 1)]
    fields = _fields(SAMPLES[cls]) | {name: many}
    with pytest.raises(MalformedPayload, match=rf"{cls.__name__}\.{name}: {cap + 1} entries, at most {cap}"):
        decode_message(_map_frame(cls, fields))
    ok = dict(list(many.items())[:cap]) if name == "metrics" else tuple(many[:cap])
    assert len(getattr(decode_message(encode_message(dataclasses.replace(SAMPLES[cls], **{name: ok}))), name)) == cap
