"""Reading a user's ONNX file for the importer (onnx_import.py): the model with its external
data read in, the sha256 the manifest records, and the one error type of the import."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from fedge.edge_runtime.kernel.errors import ConfigError


class OnnxImportError(ConfigError):
    """The source graph has something the importer cannot turn into a backbone and dense tail."""


def load_source(path: str | Path, expect_sha256: str = "") -> tuple[onnx.ModelProto, str]:
    """The model with any external data read in (torch's dynamo exporter writes weights to a
    .data file beside the .onnx), and the sha256 of what was read: the .onnx file, then each data
    file it names, in name order (for a model without external data, the file's own sha256)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ONNX model ({exc.strerror})") from None
    digest = hashlib.sha256(data)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, or others on truncated files
        if expect_sha256:
            _check_unchanged(path, digest.hexdigest(), expect_sha256)
        raise OnnxImportError(f"{path}: not an ONNX model ({exc})") from None
    for name in _external_files(model, path):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((path.parent / name).read_bytes()).digest())
    if expect_sha256:
        _check_unchanged(path, digest.hexdigest(), expect_sha256)
    if model.ir_version > onnx.IR_VERSION:
        # The prefix keeps the source's ops; stamped with the newest IR this onnx checks, it is
        # then checked as that, and ONNX Runtime's run of it (onnx_batch) says if it takes it.
        model.ir_version = onnx.IR_VERSION
    if _external_files(model, path):
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model, digest.hexdigest()


def _external_files(model: onnx.ModelProto, path: Path) -> list[str]:
    """The data files the model's tensors name, checked to be readable files beside it."""
    names = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if onnx.external_data_helper.uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            file = (path.parent / location).resolve()
            if not location or path.parent.resolve() not in file.parents:
                raise OnnxImportError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is not "
                                      "a file in the model's folder")
            if not file.is_file():
                raise OnnxImportError(f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is "
                                      "missing; keep the .data file beside the .onnx file")
            names.add(location)
    return sorted(names)


def _check_unchanged(path: Path, digest: str, expected: str) -> None:
    if digest != expected:
        raise OnnxImportError(f"{path}: sha256 {digest[:12]}... is not the imported file's ({expected[:12]}...); "
                              "re-import it")
