"""`fedge build-artifacts SPEC OUTDIR`: every file a device needs for one model spec."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.artifact_layout import ORT_DIR
from fedge.edge_runtime.kernel.backends import available_backends
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, Manifest, compute_model_id, sha256_file

from .graphs import OPTIMIZERS, build_backbone, build_eval, build_train_step, heads_of
from .output_dir import read_record, refuse_file_as_folder, refuse_foreign, write_record
from .params import init_params, param_infos
from .spec import ModelSpec, located

log = logging.getLogger("fedge.models.build")


def build_artifacts(spec: ModelSpec, outdir: str | Path, ort_training: bool | None = None) -> Manifest:
    """Write the portable graphs (always), ORT training artifacts (when the training build of
    onnxruntime is installed, or required with ort_training=True), the initial params, and
    the manifest last, so a directory with a manifest is complete."""
    outdir = Path(outdir)
    want_ort = "ort-training" in available_backends() if ort_training is None else ort_training
    _refuse_foreign_files(outdir, want_ort)
    outdir.mkdir(parents=True, exist_ok=True)
    # Before the first file: a build that dies midway (Ctrl-C, a full disk, an ORT error) leaves
    # a folder this record says is fedge's, so the next build may replace what it left.
    write_record(outdir / BUILD_RECORD, _BUILD_NAMES, "fedge build-artifacts")
    values = init_params(spec)
    if spec.onnx:  # an imported model: its pretrained tail (and classifier) replace the random values
        from .onnx_import import pretrained_values

        values.update(pretrained_values(spec))
    infos = param_infos(spec)
    files: list[str] = []

    def write_model(rel: str, model) -> None:
        atomic_write_bytes(outdir / rel, model.SerializeToString())
        files.append(rel)

    backbone = build_backbone(spec, values)
    if spec.onnx:  # the whole imported model against its source, before anything says it is built
        from .onnx_check import check_import

        check_import(spec, values, backbone)
    if backbone is not None:
        write_model("backbone.onnx", backbone)
    else:  # an earlier build's (fedge's: checked above) would still be run by ModelRuntime.embed and export
        (outdir / "backbone.onnx").unlink(missing_ok=True)
    write_model("eval.onnx", build_eval(spec, values))
    for optimizer in OPTIMIZERS:
        write_model(f"train_step_{optimizer}.onnx", build_train_step(spec, values, optimizer))
    buf = io.BytesIO()
    np.savez(buf, **values)
    atomic_write_bytes(outdir / "params_init.npz", buf.getvalue())
    files.append("params_init.npz")

    if want_ort:
        from .ort_artifacts import generate_ort_artifacts

        files.extend(generate_ort_artifacts(spec, values, outdir))
    else:
        log.info("onnxruntime-training not installed: skipped ORT training artifacts (portable graphs built)")

    manifest = Manifest(
        # The source's path is provenance, not identity: the sha256 next to it is.
        model_id=compute_model_id({k: v for k, v in spec.to_dict().items() if k != "onnx"}, infos, values),
        name=spec.name,
        spec=_recorded_spec(spec, outdir),
        params=infos,
        input_shape=tuple(spec.input_shape),
        embedding_shape=spec.embedding_shape(),
        heads=heads_of(spec),
        files={rel: sha256_file(outdir / rel) for rel in files},
    )
    atomic_write_bytes(outdir / MANIFEST_FILE, manifest.to_json().encode())
    return manifest


def _recorded_spec(spec: ModelSpec, outdir: Path) -> dict:
    """The spec the manifest records, an import's source named relative to the output folder
    (spec.load_spec reads it from there): an absolute path shipped the builder's home folder to
    every device, and one relative to the build's cwd was lost when run from another folder."""
    recorded = spec.to_dict()
    if spec.onnx:
        recorded["onnx"] = os.path.relpath(located(spec.onnx), outdir.resolve())
    return recorded


BUILD_RECORD = ".fedge-build.json"  # written before a build's first file (models/output_dir.py)
_BUILD_NAMES = ("backbone.onnx", "eval.onnx", "params_init.npz", MANIFEST_FILE,
                *(f"train_step_{optimizer}.onnx" for optimizer in OPTIMIZERS))


def _refuse_foreign_files(outdir: Path, want_ort: bool) -> None:
    """Before anything is written: a folder with a manifest is an earlier build's, its files
    fedge's to replace. In any other folder, a file under a name the build writes is someone
    else's (output_dir.py). The ORT folder has its own check (ort_artifacts._check_replaceable),
    made here too, so a refusal there does not come after the portable graphs are written."""
    refuse_file_as_folder(outdir, "build-artifacts")
    if want_ort and (outdir / ORT_DIR).exists():
        from .ort_artifacts import _check_replaceable

        _check_replaceable(outdir / ORT_DIR)
    if not outdir.is_dir() or (outdir / MANIFEST_FILE).is_file() and _is_manifest(outdir / MANIFEST_FILE):
        return
    if read_record(outdir / BUILD_RECORD) is not None:  # an earlier build's, if unfinished
        return
    if (outdir / BUILD_RECORD).exists() or (outdir / BUILD_RECORD).is_symlink():
        refuse_foreign(outdir, [BUILD_RECORD], "build-artifacts")
    # Without a manifest, an ort/ folder with anything in it is someone else's whatever its
    # files are called (a TensorFlow checkpoint index is a file named "checkpoint"): it would
    # be replaced. An empty one loses nothing.
    ort = outdir / ORT_DIR
    foreign_ort = want_ort and (not ort.is_dir() or ort.is_symlink() or any(ort.iterdir())) and (
        ort.exists() or ort.is_symlink())
    names = [*_BUILD_NAMES, *([ORT_DIR] if foreign_ort else [])]
    refuse_foreign(outdir, (n for n in names if (outdir / n).exists() or (outdir / n).is_symlink()),
                   "build-artifacts")


def _is_manifest(path: Path) -> bool:
    try:
        Manifest.from_json(path.read_text(), str(path))
    except Exception:  # noqa: BLE001 - whatever is wrong with it, it is not a manifest fedge wrote
        return False
    return True
