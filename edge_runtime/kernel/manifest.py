"""The artifact manifest: what a model directory holds and the role of every parameter.

Written by `models.build` and read by devices and the coordinator. `model_id` is a content
hash over the spec, every parameter's name/shape/role and the initial values, so two builds
of the same spec give the same id, and any change to the model gives a new one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ArtifactError, ArtifactIntegrityError, ManifestMismatch, UnsafeModelId
from .wire_fields import MODEL_ID

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
ROLES = ("frozen", "shared", "personal")


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    role: str
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"param {self.name}: role {self.role!r} not in {ROLES}")


@dataclass(frozen=True)
class Manifest:
    model_id: str
    name: str
    spec: dict
    params: tuple[ParamInfo, ...]
    input_shape: tuple[int, ...]  # per example, as the backbone expects it
    embedding_shape: tuple[int, ...]  # per example, as the train/eval graphs expect it
    heads: tuple[str, ...]  # subset of ("global", "personal")
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format: int = MANIFEST_FORMAT

    def by_role(self, role: str) -> tuple[ParamInfo, ...]:
        return tuple(p for p in self.params if p.role == role)

    @property
    def trainable(self) -> tuple[ParamInfo, ...]:
        return tuple(p for p in self.params if p.role != "frozen")

    def to_json(self) -> str:
        d = {
            "format": self.format,
            "model_id": self.model_id,
            "name": self.name,
            "spec": self.spec,
            "params": [{"name": p.name, "shape": list(p.shape), "role": p.role, "dtype": p.dtype} for p in self.params],
            "input_shape": list(self.input_shape),
            "embedding_shape": list(self.embedding_shape),
            "heads": list(self.heads),
            "files": dict(sorted(self.files.items())),
        }
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str, where: str = MANIFEST_FILE) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") != MANIFEST_FORMAT:
                raise ArtifactError(
                    f"{where}: manifest format {d.get('format')!r} is not {MANIFEST_FORMAT}; rebuild with `fedge "
                    "build-artifacts`"
                )
            return cls(
                model_id=_folder_name(str(d["model_id"]), where),
                name=str(d["name"]),
                spec=dict(d["spec"]),
                params=tuple(ParamInfo(p["name"], tuple(int(s) for s in p["shape"]), p["role"], p["dtype"])
                             for p in d["params"]),
                input_shape=tuple(int(s) for s in d["input_shape"]),
                embedding_shape=tuple(int(s) for s in d["embedding_shape"]),
                heads=tuple(d["heads"]),
                files={str(k): str(v) for k, v in d["files"].items()},
            )
        except ArtifactError:
            raise
        # AttributeError: JSON that is no object; RecursionError: `[[[[...` nested a few thousand deep
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ArtifactError(f"{where}: not a valid fedge manifest ({exc}); rebuild with `fedge "
                                "build-artifacts`") from None


def check_model_id(model_id: str) -> str:
    """`model_id`, if it can name a folder of its own; else UnsafeModelId."""
    if not isinstance(model_id, str) or not MODEL_ID.fullmatch(model_id):
        raise UnsafeModelId(f"model id {model_id!r} cannot name a folder: it must be {MODEL_ID.description}")
    return model_id


def _folder_name(model_id: str, where: str) -> str:
    """A manifest's model id names the model's folders on the device, so the manifest is refused
    where it names none of its own (a hand-edited one: "uplink_rate.json" or "../x")."""
    try:
        return check_model_id(model_id)
    except UnsafeModelId as exc:
        raise UnsafeModelId(f"{where}: {exc}") from None


def compute_model_id(spec: dict, params: tuple[ParamInfo, ...], values: dict[str, np.ndarray]) -> str:
    """Content hash of a model: spec, parameter layout and initial values."""
    return _content_hash(spec, params, values).hexdigest()[:24]


def _content_hash(spec: dict, params: tuple[ParamInfo, ...], values: dict[str, np.ndarray]):
    h = hashlib.sha256()
    h.update(json.dumps(spec, sort_keys=True).encode())
    for p in params:
        h.update(f"{p.name}|{p.shape}|{p.role}|{p.dtype}".encode())
        h.update(np.ascontiguousarray(values[p.name], dtype="<f4").tobytes())
    return h


BACKBONE_FILE = "backbone.onnx"


def state_key(manifest: Manifest, values: dict[str, np.ndarray]) -> str:
    """Which model a device's private state (personal head, optimizer state, residuals, c_i,
    embeddings) was trained for, from what the device verified itself: the model id the
    manifest claims, the spec (its source path aside, as for the id), every param's layout and
    initial value (frozen ones too: a LoRA layer's base weight) and the sha256 of the backbone
    file (none: no backbone). The model id alone is the coordinator's word: the same id
    announced with another backbone of the same shapes kept the old head. The manifest's own
    hash is not used: builds of one model differ in it where nothing the state depends on does
    (with and without the ORT training files, from a source at another path, graphs written by
    another onnx version), and each such rebuild would start every device's state over."""
    spec = {k: v for k, v in manifest.spec.items() if k != "onnx"}
    h = _content_hash(spec, manifest.params, values)
    h.update(f"|{manifest.model_id}|{manifest.files.get(BACKBONE_FILE, '-')}".encode())
    return h.hexdigest()[:32]


def open_regular(path: Path):
    """`path` opened for reading in binary, or OSError where it is not a regular file: opened
    without O_NONBLOCK, a FIFO by an artifact's name blocked the device until a writer came."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_hash(directory: Path) -> str | None:
    """The sha256 of a model folder's manifest, or None where it cannot be read (missing, a
    folder or a FIFO by that name, no permission): such a folder holds no known model."""
    try:
        return sha256_file(Path(directory) / MANIFEST_FILE)
    except OSError:
        return None


def load_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read `manifest.json` from an artifact directory; with verify, check every file's hash."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.exists():
        raise ArtifactError(f"{directory}: no {MANIFEST_FILE}; build artifacts with `fedge build-artifacts SPEC "
                            f"{directory}`")
    try:
        with open_regular(path) as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:  # a folder by its name, a bad sector, not UTF-8: were bare
        raise ArtifactError(f"{path}: cannot be read ({exc}); rebuild with `fedge build-artifacts`") from None
    manifest = Manifest.from_json(text, where=str(path))
    if verify:
        verify_files(directory, manifest)
    return manifest


def verify_files(directory: Path, manifest: Manifest, only: tuple[str, ...] | None = None) -> None:
    for rel, expected in manifest.files.items():
        if only is not None and rel not in only:
            continue
        target = directory / rel
        if not target.exists():
            raise ArtifactIntegrityError(f"{target}: listed in the manifest but missing; rebuild the artifacts")
        try:
            actual = sha256_file(target)
        except OSError as exc:  # a folder by that name, no permission: was a bare IsADirectoryError
            raise ArtifactIntegrityError(f"{target}: listed in the manifest but cannot be read "
                                         f"({exc.strerror or exc}); rebuild the artifacts") from None
        if actual != expected:
            raise ArtifactIntegrityError(
                f"{target}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); "
                "the file is corrupted or was edited: rebuild with `fedge build-artifacts` or fetch it again"
            )


def check_params(manifest: Manifest, params: dict[str, np.ndarray], role: str) -> None:
    """Raise ManifestMismatch unless `params` has exactly the manifest's `role` params with their shapes."""
    expected = {p.name: p.shape for p in manifest.by_role(role)}
    if set(params) != set(expected):
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        raise ManifestMismatch(
            f"{role} params do not match manifest of model {manifest.model_id}: missing {missing}, unexpected {extra}"
        )
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ManifestMismatch(f"param {name}: shape {tuple(params[name].shape)} but the manifest says {shape}")
