"""One model's artifacts loaded on a device: manifest (hash-verified), backbone session,
initial params, the state key of its contents, and a per-dataset embedding cache.

Loaded once and kept, so what it holds must stay what is on disk: `stale` says when the folder's
manifest changed since (the operator put another build there), and the backbone is verified
against the manifest when its session is made (a backbone.onnx swapped under an unchanged
manifest ran unverified)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .kernel.errors import (
    ArtifactError,
    ArtifactIntegrityError,
    DatasetError,
    FedgeError,
    ManifestMismatch,
    TrainingError,
)
from .kernel.features import laid_out_otherwise
from .kernel.files import load_npz
from .kernel.manifest import (
    BACKBONE_FILE,
    Manifest,
    load_manifest,
    manifest_hash,
    state_key,
    verify_files,
)

EMBED_CHUNK = 512  # examples per backbone call: bounds peak memory on small boards


INIT_FILE = "params_init.npz"


def _initial_values(directory: Path, manifest: Manifest) -> dict[str, np.ndarray]:
    """The model's initial params, from a file its (hash-checked) manifest lists; else
    ArtifactError. A model can come over the wire: one whose manifest left this file out, or
    whose file held no npz or missed a param, raised OSError or KeyError out of the device loop."""
    if INIT_FILE not in manifest.files:
        raise ArtifactIntegrityError(f"{directory}: {INIT_FILE} is not listed in the manifest, so it is unverified")
    try:
        values = load_npz(directory / INIT_FILE)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{directory / INIT_FILE}: not a readable npz ({exc})") from None
    missing = sorted(p.name for p in manifest.params if p.name not in values)
    if missing:
        raise ManifestMismatch(f"{directory / INIT_FILE}: no initial values for {missing[:5]}")
    return values


class ModelRuntime:
    def __init__(self, artifact_dir: str | Path, expected_model_id: str | None = None):
        self.dir = Path(artifact_dir)
        self.manifest_sha256 = manifest_hash(self.dir)  # before the load: a change meanwhile shows as stale
        self.manifest: Manifest = load_manifest(self.dir, verify=True)
        if expected_model_id is not None and self.manifest.model_id != expected_model_id:
            raise ManifestMismatch(
                f"{self.dir}: artifacts are model {self.manifest.model_id}, expected {expected_model_id}; "
                "point the device at the right artifact directory or rebuild"
            )
        self.init_values = _initial_values(self.dir, self.manifest)
        self.state_key = state_key(self.manifest, self.init_values)  # what the device's own state is kept under
        self._backbone = None
        self._cache: dict[int, np.ndarray] = {}

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def initial(self, role: str) -> dict[str, np.ndarray]:
        return {p.name: self.init_values[p.name].copy() for p in self.manifest.by_role(role)}

    def check_input(self, x: np.ndarray, where: str = "data") -> np.ndarray:
        """Reshape flat examples to the model's input shape, or say why they don't fit."""
        want = self.manifest.input_shape
        size = int(np.prod(want))
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != size:
            raise DatasetError(
                f"{where}: examples of shape {tuple(x.shape[1:])} do not fit model {self.manifest.name} "
                f"input {want} ({size} values); rebuild the model for this data or fix the data"
            )
        if laid_out_otherwise(x, tuple(want)):
            raise DatasetError(
                f"{where}: examples of shape {tuple(x.shape[1:])} are laid out otherwise than model "
                f"{self.manifest.name}'s input {tuple(want)}: both hold {size} values, in a different order "
                f"(channels-last for a channels-first model?), so each would be read as garbage; save them as "
                f"{tuple(want)} (np.moveaxis(x, -1, 1) turns channels-last into channels-first)"
            )
        if not np.all(np.isfinite(x)):
            raise DatasetError(f"{where}: contains NaN or Inf; clean the data")
        return np.ascontiguousarray(x.reshape((len(x), *want)), dtype=np.float32)

    def check_labels(self, y: np.ndarray, where: str = "data") -> None:
        """Labels within the model's classes: ONNX Runtime fails deep inside a step otherwise (a
        label of 99 for 10 classes ended a task in a GatherElements error and no decline)."""
        if len(y) and int(np.min(y)) < 0:  # a negative label indexes from the end: -1 trained as the last class
            raise DatasetError(f"{where}: label {int(np.min(y))} is negative; labels are 0..num_classes - 1")
        classes = int(self.manifest.spec.get("num_classes", 0))
        if classes and len(y) and int(np.max(y)) >= classes:
            raise DatasetError(f"{where}: label {int(np.max(y))} is outside model {self.manifest.name}'s "
                               f"{classes} classes (labels 0..{classes - 1}); relabel the data or fix the model")

    def stale(self) -> bool:
        """Whether the folder's manifest is no longer the one loaded (replaced, edited, gone)."""
        return manifest_hash(self.dir) != self.manifest_sha256

    def forget_embeddings(self) -> None:
        """Drop cached backbone outputs: the data they were computed from was replaced."""
        self._cache.clear()

    def embed(self, x: np.ndarray, cache_key: int | None = None) -> np.ndarray:
        """Backbone output for x, computed once per cache_key (the frozen part never changes)."""
        if cache_key is not None and cache_key in self._cache:
            return self._cache[cache_key]
        x = self.check_input(x)
        if BACKBONE_FILE not in self.manifest.files and not (self.dir / BACKBONE_FILE).exists():
            z = x.reshape(len(x), -1)
        else:
            if self._backbone is None:
                from .trainer.portable import make_session

                # What the state key covers, and nothing else: one the manifest does not list (or
                # one replaced since the load) is refused, naming it.
                if BACKBONE_FILE not in self.manifest.files:
                    raise ArtifactIntegrityError(f"{self.dir / BACKBONE_FILE}: not listed in the manifest, so it "
                                                 "is unverified; remove it or rebuild the artifacts")
                verify_files(self.dir, self.manifest, only=(BACKBONE_FILE,))
                self._backbone = loaded(lambda: make_session(self.dir / BACKBONE_FILE), self)
            parts = [self._backbone.run(["z"], {"x": x[i : i + EMBED_CHUNK]})[0] for i in range(0, len(x), EMBED_CHUNK)]
            z = np.concatenate(parts) if parts else np.zeros((0, *self.manifest.embedding_shape), np.float32)
        if cache_key is not None:
            self._cache[cache_key] = z
        return z


def loaded(build, model: ModelRuntime):
    """build(), with what ONNX Runtime or numpy raise on a model's files (a fetched model is
    the coordinator's word) as ArtifactError: the task is declined, the loop goes on. What it
    built comes back guarded (RunGuard): its calls raise TrainingError for what they raise."""
    try:
        return RunGuard(build(), model.model_id)
    except FedgeError:
        raise
    except Exception as exc:  # onnxruntime's errors derive from Exception alone
        raise ArtifactError(f"model {model.model_id}'s graphs do not load: {type(exc).__name__}: {exc}") from None


class RunGuard:
    """A backend or session whose method calls turn any error but a FedgeError into TrainingError.
    Graphs that load may still fail when run: a fetched manifest that names other shapes than
    its graphs take passed every check, and ORT's InvalidArgument at the first step left the
    device's poll, the task never answered."""

    def __init__(self, inner, model_id: str):
        self._inner, self._model_id = inner, model_id

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            try:
                return value(*args, **kwargs)
            except FedgeError:
                raise
            except Exception as exc:
                raise TrainingError(f"model {self._model_id}'s graphs fail when run: {type(exc).__name__}: "
                                    f"{str(exc)[:300]}") from None

        return call
