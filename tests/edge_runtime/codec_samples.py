"""The codec tests' shared material: one sample of every message type (SAMPLES), frames built
around arbitrary body bytes (`_frame`, `_map_frame`) and the msgpack fields of an encoded
message (`_fields`, and UPD / TASK / VALID_ACK built from them). Used by test_codec_frames.py
and test_codec_fields.py."""

from __future__ import annotations

import struct
import zlib

import msgpack

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, MAGIC, encode_message

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


def _frame(code: int, body: bytes, version: int = p.SCHEMA_VERSION) -> bytes:
    """A frame with a valid length and CRC around arbitrary body bytes."""
    head = struct.pack("<4sHBI", MAGIC, version, code, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def _map_frame(cls: type, fields: object) -> bytes:
    code = {c: k for k, c in p.MESSAGE_TYPES.items()}[cls]
    return _frame(code, msgpack.packb(fields, use_bin_type=True))


def _fields(msg: object) -> dict:
    return msgpack.unpackb(encode_message(msg)[HEADER_SIZE:-4], raw=False)


UPD = _fields(SAMPLES[p.Update])
TASK = _fields(SAMPLES[p.TrainTask])
VALID_ACK = {"device_id": "d", "round_id": 1, "task_id": "t", "update_id": "u", "accepted": True}
