"""Models a device fetched keep a bounded amount of its disk.

Each model a coordinator names and the device does not have is fetched into artifacts_dir and
kept (fetch.py), so a coordinator that named a new model id every round, hostile or just
long-lived, filled the device's disk in time (a reviewing helper's finding). A fetched model's
folder carries a marker that fetch.py writes, and touches each time a task uses it; past
KEEP_FETCHED such folders, the least recently used go. A folder without the marker (a model put
there by hand or by the installer, or one listed in the device config) is never removed: fedge
deletes only what it fetched."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .kernel.device_folder import NOT_A_MODEL_FOLDER
from .kernel.errors import UnsafeModelId
from .kernel.manifest import MANIFEST_FILE, check_model_id

log = logging.getLogger("fedge.agent")

FETCHED_MARK = ".fedge-fetched"  # in a model folder fetch.py installed; its mtime is the last use
KEEP_FETCHED = 4  # fetched models kept: a device trains one model, and a fleet changes models rarely


def mark_used(folder: Path) -> None:
    """A task uses this model now: it is the last to go (a folder without the marker is left alone)."""
    if (folder / FETCHED_MARK).is_file():
        (folder / FETCHED_MARK).touch()


def prune_fetched(artifacts_dir: Path, keep_ids: set[str], keep: int = KEEP_FETCHED) -> list[str]:
    """Remove the least recently used fetched models beyond `keep`, never one in `keep_ids` (in
    use or awaited); the ids removed."""
    if not artifacts_dir.is_dir():
        return []
    fetched = [d for d in artifacts_dir.iterdir()
               if d.is_dir() and not d.is_symlink() and (d / FETCHED_MARK).is_file() and (d / MANIFEST_FILE).is_file()]
    fetched.sort(key=lambda d: (d / FETCHED_MARK).stat().st_mtime, reverse=True)
    removed = []
    for folder in fetched[keep:]:
        if folder.name in keep_ids:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
        log.info("removed fetched model %s (least recently used of more than %d)", folder.name, keep)
    return removed


def installed_models(artifacts: Path) -> dict[str, Path]:
    """model id -> its folder, for each folder of `artifacts` with a manifest. A folder whose name
    is no model id (a name the device's own folder holds, device_folder.RESERVED) is skipped with
    a log line: its state folder would be that file or folder, and its id in the CheckIn
    failed to encode, so the device could not check in at all."""
    models = {}
    for d in sorted(artifacts.iterdir()) if artifacts.exists() else ():
        if not (d / MANIFEST_FILE).exists():
            continue
        try:
            models[check_model_id(d.name)] = d
        except UnsafeModelId as exc:
            log.error("%s: %s, skipped: %s", NOT_A_MODEL_FOLDER, d, exc)
    return models
