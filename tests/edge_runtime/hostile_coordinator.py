"""A hostile coordinator for device tests: frames of every message a device reads, with
field values drawn from the edges of what the codec lets through, plus raw garbage.

Values are generated from the dataclasses themselves (field types and `bounded` ranges), so a
field added to the protocol is fuzzed without touching this file. Ids come from small pools, so
a hostile Ack, KeyDirectory or ArtifactFile often names a task or model the device really has.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing

import numpy as np

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import MESSAGE_TYPES, encode_message
from fedge.edge_runtime.kernel.errors import CodecError
from fedge.edge_runtime.kernel.secagg import messages as sm
from fedge.edge_runtime.kernel.update_codec import encode_dense

# What a coordinator (or anyone who can publish on a misconfigured broker) sends a device.
INBOUND = (p.TrainTask, p.EvalTask, p.Pace, p.Ack, p.Announcement, p.ModelPart, p.ArtifactFile,
           sm.SecAggTask, sm.KeyDirectory, sm.ShareDelivery, sm.UnmaskRequest)
# File names a manifest may list: each one has once been, or could be, a way out of a folder.
HOSTILE_PATHS = ("", ".", "./manifest.json", "manifest.json", "x", "x/y", "sub/", "..", "../escape", "/abs",
                 "a\\b", "a" * 256, "ok.bin")
TEXT = ("", "t1", "t2", "devA", "x" * 256, "../../etc/passwd", "r\u00e9sum\u00e9", "a/b")


class HostileCoordinator:
    def __init__(self, device_id: str, shared: dict[str, np.ndarray], model_id: str, manifest_json: bytes,
                 rng: np.random.Generator):
        self.device_id = device_id
        self.rng = rng
        self.model_id = model_id
        shapes = {k: v.shape for k, v in shared.items()}
        self.params = (encode_dense(shared), encode_dense({k: np.full(s, 1e30, np.float32) for k, s in shapes.items()}),
                       encode_dense({k: np.zeros(s, np.float32) for k, s in shapes.items()}),
                       encode_dense({"w": np.zeros(3, np.float32)}), b"", b"FDGU" + bytes(40))
        self.real_manifest_sha = hashlib.sha256(manifest_json).hexdigest()
        self.manifests = self._manifests(manifest_json)  # model id -> (manifest bytes, its sha256)
        self.task_ids = [f"t{i}" for i in range(6)]
        self.model_ids = [model_id, "m-hostile", "m-other", *self.manifests]
        self.shas = ["", hashlib.sha256(b"round").hexdigest(), "0" * 64]
        self.issued = 0

    def _manifests(self, real: bytes) -> dict[str, tuple[bytes, str]]:
        """Manifests a hostile coordinator may stand behind (it sends their hash in the task)."""
        out = {}
        for i, path in enumerate(HOSTILE_PATHS):
            doc = json.loads(real)
            doc["model_id"] = f"h{i}"
            doc["files"] = {path: hashlib.sha256(b"data").hexdigest(), "x": hashlib.sha256(b"data").hexdigest()}
            out[f"h{i}"] = json.dumps(doc).encode()
        out["hjson"] = b"[]"
        out["hbad"] = b"\xff\xfe"
        return {k: (v, hashlib.sha256(v).hexdigest()) for k, v in out.items()}

    # ------------------------------------------------------------------ frames

    def frame(self) -> tuple[str, bytes]:
        """(channel or topic, payload): mostly valid frames with extreme values, some garbage."""
        roll = self.rng.random()
        if roll < 0.1:
            return self._channel(), bytes(self.rng.integers(0, 256, int(self.rng.integers(0, 64)), dtype=np.uint8))
        if roll < 0.15:  # a valid frame cut short or flipped: the codec's to refuse
            _, data = self.frame()
            cut = bytearray(data[: int(self.rng.integers(0, len(data) + 1))])
            if cut:
                cut[int(self.rng.integers(0, len(cut)))] ^= 0xFF
            return self._channel(), bytes(cut)
        if roll < 0.35:
            return self._artifact()
        cls = INBOUND[int(self.rng.integers(0, len(INBOUND)))]
        for _ in range(20):  # __post_init__ refuses some combinations; draw again
            try:
                msg = self.value(cls, "")
                return self._channel_for(msg), encode_message(msg)
            except (ValueError, CodecError):
                continue
        return self._channel(), b""

    def _artifact(self) -> tuple[str, bytes]:
        """A file of one of the hostile manifests: the manifest itself, or one of its files."""
        model_id = list(self.manifests)[int(self.rng.integers(0, len(self.manifests)))]
        manifest, sha = self.manifests[model_id]
        if self.rng.random() < 0.4:
            item = p.ArtifactFile(model_id, "manifest.json", sha, manifest, 0, 2)
        else:
            path = HOSTILE_PATHS[int(self.rng.integers(0, len(HOSTILE_PATHS)))]
            item = p.ArtifactFile(model_id, path, hashlib.sha256(b"data").hexdigest(), b"data", 1, 2)
        return "artifact", encode_message(item)

    def transfer(self) -> list[tuple[str, bytes]]:
        """A task naming one of the hostile manifests by its hash, then that manifest and a few
        of the files it lists: what gets a file name as far as the device's disk."""
        model_id = list(self.manifests)[int(self.rng.integers(0, len(self.manifests)))]
        manifest, sha = self.manifests[model_id]
        task = p.TrainTask(1, self.fresh_id(), self.device_id, model_id, 1, self.params[0], manifest_sha256=sha)
        frames = [("task", encode_message(task)),
                  ("artifact", encode_message(p.ArtifactFile(model_id, "manifest.json", sha, manifest, 0, 3)))]
        for _ in range(int(self.rng.integers(1, 4))):
            path = HOSTILE_PATHS[int(self.rng.integers(0, len(HOSTILE_PATHS)))]
            item = p.ArtifactFile(model_id, path, hashlib.sha256(b"data").hexdigest(), b"data", 1, 3)
            frames.append(("artifact", encode_message(item)))
        return frames

    def fresh_id(self) -> str:
        """A task id not used before; the pool keeps the latest few, for Acks and later stages."""
        self.issued += 1
        task_id = f"h{self.issued}"
        self.task_ids[self.issued % len(self.task_ids)] = task_id
        return task_id

    def _channel(self) -> str:
        return ("task", "ack", "artifact", "announce", "model")[int(self.rng.integers(0, 5))]

    def _channel_for(self, msg) -> str:
        if self.rng.random() < 0.1:
            return self._channel()  # the wrong topic for it
        return {p.Ack: "ack", p.ArtifactFile: "artifact", p.Announcement: "announce",
                p.ModelPart: "model"}.get(type(msg), "task")

    # ------------------------------------------------------------------ values

    def pick(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def value(self, tp, name: str, meta=None):
        meta = meta or {}
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            kwargs = {f.name: self.value(hints[f.name], f.name, f.metadata) for f in dataclasses.fields(tp)}
            return tp(**kwargs)
        if origin is tuple:
            inner = typing.get_args(tp)[0]
            n = int(self.pick([0, 1, 2, 3, 50]))
            return tuple(self.value(inner, name) for _ in range(n))
        if origin is dict:
            return {f"k{i}": float(self.rng.normal()) for i in range(int(self.rng.integers(0, 4)))}
        if tp is bool:
            return bool(self.rng.integers(0, 2))
        if tp is int:
            lo, hi = meta.get("range", (0, 2**63 - 1))
            return int(self.pick([lo, hi, lo + 1, max(lo, min(hi, int(self.rng.integers(0, 10)))),
                                  max(lo, min(hi, 1))]))
        if tp is float:
            lo, hi = meta.get("range", (0.0, 1e9))
            return float(self.pick([lo, hi, min(hi, max(lo, 1e-300)), min(hi, max(lo, 0.5)),
                                    min(hi, max(lo, float(self.rng.uniform(lo, min(hi, 10.0)))))]))
        if tp is bytes:
            return self._bytes(name)
        if tp is str:
            return self._text(name, meta)
        raise TypeError(f"no generator for {tp!r} ({name})")

    def _bytes(self, name: str) -> bytes:
        if name in ("params", "correction"):
            return self.pick(self.params)
        if name in ("cipher_public", "mask_public"):
            return bytes(self.rng.integers(0, 256, sm.KEY_BYTES, dtype=np.uint8))
        if name == "ciphertext":
            return bytes(self.pick(sorted(sm.SEALED_SIZES)))
        n = int(self.pick([0, 1, 16, 4096]))
        return bytes(self.rng.integers(0, 256, n, dtype=np.uint8))

    def _text(self, name: str, meta) -> str:
        if name == "device_id":
            return self.device_id if self.rng.random() < 0.9 else self.pick(TEXT)
        if name in ("task_id", "eval_id"):  # new work mostly; sometimes a task the device knows
            return self.pick(self.task_ids) if self.rng.random() < 0.3 else self.fresh_id()
        if "pattern" in meta:  # the device's own model mostly, so tasks get as far as training
            return self.model_id if self.rng.random() < 0.6 else self.pick(self.model_ids)
        if name in ("manifest_sha256", "round_model_sha256") and self.rng.random() < 0.7:
            return self.real_manifest_sha if name == "manifest_sha256" else ""  # so tasks get to train
        if name in ("sha256", "manifest_sha256", "round_model_sha256", "model_sha256"):
            return self.pick(self.shas + [sha for _, sha in self.manifests.values()])
        if name == "optimizer":
            return self.pick(p.OPTIMIZERS)
        if name == "path":
            return self.pick(HOSTILE_PATHS)
        return self.pick(TEXT)


assert set(INBOUND) <= set(MESSAGE_TYPES.values())
