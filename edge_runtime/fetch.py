"""Receiving a model's artifacts over the wire, verified before anything is used.

The task names the model (model_id) and the sha256 of its manifest.json. The manifest
arrives first and must hash to that value; it lists every other file with its sha256, and
each file must match before it is written. Files go to a staging directory that is renamed
into place only when the whole set is present and verified, so a device never trains on a
partial or tampered model, and a crash mid-download leaves nothing half-installed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .fetched_models import FETCHED_MARK
from .kernel.errors import ArtifactError, ArtifactIntegrityError
from .kernel.files import atomic_write_bytes
from .kernel.manifest import MANIFEST_FILE, Manifest, check_model_id, load_manifest
from .kernel.protocol import ArtifactFile

NAME_MAX = 255  # bytes in one file name (ext4, FAT, tmpfs)
# A file is staged by atomic_write_bytes as `.<name>.tmp-<pid>`: 6 bytes and a pid of up to 7 digits
# (Linux's pid_max is at most 2**22) more than its name. A name of 243 to 255 bytes passed the
# manifest's check and failed at staging, after the files before it had come.
_STAGED_EXTRA = len(".") + len(".tmp-") + 7
MAX_FILES = 64  # files one model may list: fedge's artifacts are about ten
MAX_MODEL_BYTES = 512 << 20  # one model's files together; with fetched_models.KEEP_FETCHED, the disk it can take


class ArtifactDownload:
    def __init__(self, model_id: str, manifest_sha256: str, dest: str | Path, max_bytes: int = MAX_MODEL_BYTES):
        if not manifest_sha256:
            raise ArtifactError(f"model {model_id}: the task carries no manifest hash, so fetched files cannot be "
                                "verified")
        self.model_id = check_model_id(model_id)  # dest and staging are named after it: a plain name
        self.manifest_sha256 = manifest_sha256
        self.dest = Path(dest)
        _check_replaceable(self.dest, model_id)
        self.staging = self.dest.with_name(f".{self.dest.name}.partial")
        shutil.rmtree(self.staging, ignore_errors=True)
        self.manifest: Manifest | None = None
        self.received: set[str] = set()
        self.max_bytes = max_bytes
        self.staged_bytes = 0

    @property
    def complete(self) -> bool:
        return self.manifest is not None and self.received >= set(self.manifest.files)

    def accept(self, item: ArtifactFile) -> bool:
        """Verify and stage one file; True once the whole model is installed at `dest`.

        Raises ArtifactIntegrityError for a file whose hash does not match, ArtifactError for
        one that does not belong to this model.
        """
        if item.model_id != self.model_id:
            raise ArtifactError(f"file {item.path!r} belongs to model {item.model_id}, not {self.model_id}")
        digest = hashlib.sha256(item.data).hexdigest()
        if item.path == MANIFEST_FILE:
            if digest != self.manifest_sha256:
                raise ArtifactIntegrityError(f"model {self.model_id}: manifest sha256 {digest[:12]}... is not the "
                                             f"task's {self.manifest_sha256[:12]}...")
            manifest = Manifest.from_json(item.data.decode("utf-8", "replace"))
            if manifest.model_id != self.model_id:
                raise ArtifactIntegrityError(f"manifest names model {manifest.model_id}, task wants {self.model_id}")
            _check_names(manifest)
            self.manifest = manifest
            _write(self.staging / MANIFEST_FILE, item.data)
        else:
            if self.manifest is None:
                raise ArtifactError(f"file {item.path!r} arrived before the manifest")
            expected = self.manifest.files.get(item.path)
            if expected is None:
                raise ArtifactError(f"file {item.path!r} is not listed in model {self.model_id}'s manifest")
            if digest != expected:
                raise ArtifactIntegrityError(f"{item.path}: sha256 {digest[:12]}... does not match the manifest")
            self.staged_bytes += len(item.data)
            if self.staged_bytes > self.max_bytes:  # each file fits a message; together they could fill the disk
                raise ArtifactError(f"model {self.model_id} is over {self.max_bytes} bytes")
            _write(self.staging / item.path, item.data)
            self.received.add(item.path)
        if not self.complete:
            return False
        load_manifest(self.staging, verify=True)  # re-read from disk: what we will run is what was checked
        (self.staging / FETCHED_MARK).touch()  # fedge fetched it, so fedge may remove it (fetched_models.py)
        _check_replaceable(self.dest, self.model_id)  # it may have come while the files did
        if self.dest.exists():
            shutil.rmtree(self.dest)
        self.staging.rename(self.dest)
        return True

    def discard(self) -> None:
        """The download failed or timed out: its staged files go (they stayed on disk, up to
        max_message_bytes each, under a folder per model id a coordinator named)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def missing(self) -> tuple[str, ...]:
        if self.manifest is None:
            return ()
        return tuple(sorted(set(self.manifest.files) - self.received))


def _check_replaceable(dest: Path, model_id: str) -> None:
    """ArtifactError unless `dest` is absent or a folder fedge fetched (its marker): the model
    installed by hand in the artifacts folder (where `fedge device run` finds installed models)
    was removed and replaced by whatever a task's manifest hash named, against fetched_models.py's
    promise that fedge deletes only what it fetched."""
    if dest.is_symlink() or (dest.exists() and not (dest / FETCHED_MARK).is_file()):
        raise ArtifactError(f"model {model_id}: {dest} was not fetched by fedge (no {FETCHED_MARK} marker) and does "
                            "not match the task's manifest hash; fedge does not replace it (remove it to let the "
                            "device fetch the coordinator's)")


def _check_names(manifest: Manifest) -> None:
    """ArtifactError unless every file the manifest lists can be written under the staging
    folder as named. The manifest is the coordinator's word (the task carries its hash): "" or
    "." named the staging folder itself, "./manifest.json" overwrote the checked manifest, and a
    name 256 bytes long, or both "x" and "x/y", raised OSError out of the device's loop."""
    if len(manifest.files) > MAX_FILES:
        raise ArtifactError(f"model {manifest.model_id}'s manifest lists {len(manifest.files)} files, over {MAX_FILES}")
    folders = {"/".join(rel.split("/")[:i]) for rel in manifest.files for i in range(1, rel.count("/") + 1)}
    for rel in manifest.files:
        if not _safe(rel) or rel in folders:
            raise ArtifactError(f"model {manifest.model_id}'s manifest lists {rel[:80]!r}, which is not a plain "
                                "relative file name")


def _safe(rel: str) -> bool:
    """A relative path of plain names, each short enough for any file system once staged, other than the manifest.
    No NUL: no file system takes one, and no ArtifactFile can carry it (the codec refuses it), so
    such a download would only wait out fetch_timeout_s."""
    parts = rel.split("/")
    return rel != MANIFEST_FILE and "\\" not in rel and "\x00" not in rel and all(
        part not in ("", ".", "..") and len(part.encode()) <= NAME_MAX - _STAGED_EXTRA for part in parts)


def _write(path: Path, data: bytes) -> None:
    """Staged, or ArtifactError (a full disk, say): the download fails, the device goes on."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ArtifactError(f"cannot stage {path.name}: {exc}") from None
