"""Serving model files to devices that lack them (FetchRequest -> ArtifactFile...).

The served set is exactly the model directory's manifest.json plus the files that manifest
lists; a request names files by their manifest key, never by a path, so "../../etc/passwd"
is simply an unknown name. Every file is re-hashed against the manifest before it leaves,
so a file corrupted on the coordinator's disk is refused instead of shipped. A device gets
at most one transfer per `min_interval_s`: one small request must not make the coordinator
publish a whole model again and again.

    FetchRefused                 (base; .reason is the metric label)
    ├── UnknownModel             model id is not the one this coordinator serves
    ├── UnknownArtifact          a requested name is not in the manifest
    ├── FetchRateLimited         the device had a transfer less than min_interval_s ago
    ├── ArtifactUnavailable      a listed file is missing or no longer matches its hash
    └── UnknownTask              an inline-task request names no task the open round waits on
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from fedge.edge_runtime.kernel.errors import ArtifactError, ConfigError, FedgeError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, Manifest
from fedge.edge_runtime.kernel.protocol import ArtifactFile, FetchRequest

_PRUNE_AT = 10_000  # remembered devices before old rate-limit entries are dropped


class FetchRefused(FedgeError):
    reason = "fetch_refused"


class UnknownModel(FetchRefused):
    reason = "unknown_model"


class UnknownArtifact(FetchRefused):
    reason = "unknown_artifact"


class FetchRateLimited(FetchRefused):
    reason = "rate_limited"


class ArtifactUnavailable(FetchRefused):
    reason = "artifact_unavailable"


class UnknownTask(FetchRefused):
    reason = "unknown_task"


class ArtifactServer:
    """The files of one model directory, and who fetched them when."""

    def __init__(self, directory: str | Path, min_interval_s: float = 60.0):
        self.root = Path(directory).resolve()
        path = self.root / MANIFEST_FILE
        try:
            self.manifest_bytes = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read the manifest to serve ({exc}); set artifacts_dir "
                                "to a directory built by `fedge build-artifacts`") from None
        self.manifest = Manifest.from_json(self.manifest_bytes.decode("utf-8", "replace"), where=str(path))
        self.manifest_sha256 = hashlib.sha256(self.manifest_bytes).hexdigest()
        self.min_interval_s = min_interval_s
        self._last: dict[str, float] = {}  # device -> clock seconds of its last transfer
        for rel in self.manifest.files:
            self._resolve(rel)  # refuse to start on a manifest that points outside the directory

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def plan(self, request: FetchRequest, now: float) -> list[str]:
        """Names to send, manifest.json first. The rate limit is recorded by `transfer` once
        the last file is handed over, so a transfer cut short can be asked for again at once.

        Raises UnknownModel, UnknownArtifact or FetchRateLimited.
        """
        if request.model_id != self.model_id:
            raise UnknownModel(f"{request.device_id} asked for model {request.model_id!r}; serving {self.model_id}")
        names = list(dict.fromkeys(request.files) if request.files else self.manifest.files)
        names = [n for n in names if n != MANIFEST_FILE]  # it always goes first, once
        unknown = [n for n in names if n not in self.manifest.files]
        if unknown:
            shown = ", ".join(repr(n[:80]) for n in unknown[:3])
            raise UnknownArtifact(f"{request.device_id} asked for {shown}: not in the manifest of {self.model_id}")
        last = self._last.get(request.device_id)
        if last is not None and now - last < self.min_interval_s:
            raise FetchRateLimited(f"{request.device_id} fetched {now - last:.1f} s ago; limit is one transfer "
                                   f"per {self.min_interval_s:g} s")
        return [MANIFEST_FILE, *names]

    def transfer(self, request: FetchRequest, now: float) -> Iterator[ArtifactFile]:
        """plan() at once (so a refusal raises before anything is sent), then read() lazily.
        Each file is read when asked for, but a publisher may still queue all of them until
        the broker acknowledges; the rate limit bounds how often a device can cause that."""
        names = self.plan(request, now)

        def files() -> Iterator[ArtifactFile]:
            for i, name in enumerate(names):
                yield self.read(name, i, len(names))
            self._remember(request.device_id, now)

        return files()

    def read(self, name: str, index: int, count: int) -> ArtifactFile:
        """One file of a planned transfer, checked against the manifest's hash."""
        if name == MANIFEST_FILE:
            return ArtifactFile(self.model_id, MANIFEST_FILE, self.manifest_sha256, self.manifest_bytes, index, count)
        expected = self.manifest.files[name]
        try:
            path = self._resolve(name)  # checked at start too; a symlink may have changed since
        except ArtifactError as exc:
            raise ArtifactUnavailable(str(exc)) from None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactUnavailable(f"{path}: listed in the manifest but unreadable ({exc})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactUnavailable(f"{path}: sha256 {actual[:12]}... differs from the manifest "
                                      f"({expected[:12]}...); rebuild the artifacts")
        return ArtifactFile(self.model_id, name, expected, data, index, count)

    def _resolve(self, rel: str) -> Path:
        """The file of a manifest key, which must stay inside the model directory."""
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel or "\0" in rel:
            raise ArtifactError(f"manifest entry {rel!r} is not a plain relative path; refusing to serve it")
        path = (self.root / pure).resolve()
        if not path.is_relative_to(self.root):
            raise ArtifactError(f"manifest entry {rel!r} resolves outside {self.root} (a symlink?); "
                                "refusing to serve it")
        return path

    def _remember(self, device_id: str, now: float) -> None:
        if len(self._last) >= _PRUNE_AT:
            self._last = {d: t for d, t in self._last.items() if now - t < self.min_interval_s}
        self._last[device_id] = now


def open_artifacts(config, model_id: str) -> ArtifactServer | None:
    """The server for a CoordinatorConfig's artifacts_dir (None when unset); it must hold `model_id`."""
    if not config.artifacts_dir:
        return None
    server = ArtifactServer(config.artifacts_dir, config.fetch_interval_s)
    if server.model_id != model_id:
        raise ConfigError(f"artifacts_dir {config.artifacts_dir} holds model {server.model_id}, "
                          f"the coordinator runs {model_id}")
    return server
