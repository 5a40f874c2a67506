"""Folders that a fedge command writes files into with names of its own choosing (`fedge
build-artifacts OUTDIR`, `fedge pretrain --out`, `fedge data split --out`): a file there that
fedge did not write is never replaced or deleted.

What fedge wrote there is what its own record says: the manifest of a build (manifest.json,
written last), or the list that `claim` keeps (.fedge-pretrain.json, .fedge-data.json). Any
other file under a name a command would write, or any other .npz in a folder of per-device
files (each .npz there is one device under `fedge simulate --data`), makes the command refuse
before it writes anything (ForeignOutput, a ConfigError that names the files)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import atomic_write_bytes, file_in_the_way

# What a record may name: a file in the folder or one level under it, fedge's own spelling.
_RELATIVE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")


class ForeignOutput(ConfigError):
    """The output folder holds files, under names this command writes, that fedge did not write."""


def refuse_foreign(outdir: Path, taken: Iterable[str], command: str, why: str = "") -> None:
    """Raise ForeignOutput naming `taken` (relative names that exist and are not fedge's);
    `why`, when given, says why they are in the way (default: they would be replaced)."""
    taken = sorted(taken)
    if taken:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise ForeignOutput(f"{command}: {outdir} already holds {shown}, which fedge did not write "
                            f"({why or 'fedge never replaces a file it did not write'}): move them, or choose a new "
                            f"or empty folder")


def dangling_link(path: Path) -> str | None:
    """Why `path`, or a folder above it, cannot be written through: the first one that is a symlink
    to nothing, or None. exists() is False for it, so a check passed it and the run ended in a
    bare FileExistsError from the mkdir, or wrote its file over the user's link (or where it
    points) after the whole run."""
    for part in (path, *path.parents):
        if part.is_symlink() and not part.exists():
            return f"{part} is a symlink to {os.readlink(part)}, which does not exist: name a real folder or file"
        if part.exists():
            return None
    return None


def refuse_file_as_folder(outdir: Path, command: str) -> None:
    """ForeignOutput when a file stands at `outdir` or where one of its folders goes: it was a
    bare `FileExistsError: File exists: 'OUT'` from the mkdir. A symlink to nothing there too."""
    link = dangling_link(outdir)
    if link:
        raise ForeignOutput(f"{command}: {link}")
    blocker = file_in_the_way(outdir)
    if blocker is not None:
        where = "" if blocker == outdir else f", so {outdir} cannot be made"
        raise ForeignOutput(f"{command}: {blocker} is a file, not a folder{where}: name a new or empty folder")


def read_record(path: Path) -> set[str] | None:
    """The relative names a record lists; None when there is no readable record (a record that
    is not fedge's shape counts as none, so nothing is trusted from it)."""
    try:
        names = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and _RELATIVE.match(n) and ".." not in n
                                              for n in names):
        return None
    return set(names)


def starts_with(path: Path, header: bytes) -> bool:
    """Whether the file begins with `header`: how a command knows its own output from before
    it kept a record (a model.toml, a report.md with the first line it writes)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(header)) == header
    except OSError:
        return False


def write_record(path: Path, names: Iterable[str], command: str) -> None:
    body = {"written_by": command, "files": sorted(names)}
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())


def claim(out: Path, written: list[str], record: str, command: str, device_dir: str | None = None,
          legacy: Iterable[str] = ()) -> None:
    """Make `out` ready for a run that writes `written` (relative names), or raise ForeignOutput.

    Fedge's own files there are those its `record` lists (or, without one, `legacy`: what an
    earlier version wrote, as the caller recognises it). `device_dir` (None = none, "" = `out`
    itself) holds one .npz per device: another .npz there would be one more device, so it is refused too, and
    an earlier run's device files that this run does not write again are removed (a smaller
    fleet must not inherit the old one's extra devices). The record is written before anything
    else, naming both runs' files, so a run that dies midway leaves nothing unaccounted for; the
    caller writes it again, with `written` alone, when it is done (write_record)."""
    refuse_file_as_folder(out, command)
    recorded = read_record(out / record)
    ours = set(legacy) if recorded is None else recorded
    taken = {name for name in written if name not in ours and ((out / name).exists() or (out / name).is_symlink())}
    if recorded is None and ((out / record).exists() or (out / record).is_symlink()):
        taken.add(record)  # a file under the record's name that is no record of fedge's
    folder = out / device_dir if device_dir is not None else None
    if folder is not None and folder.is_dir():
        prefix = f"{device_dir}/" if device_dir else ""
        taken |= {prefix + p.name for p in folder.glob("*.npz") if prefix + p.name not in ours}
    elif device_dir and (folder.exists() or folder.is_symlink()):  # a file where the device folder goes
        taken.add(device_dir)
    refuse_foreign(out, taken, command, "each .npz beside the devices' files would be one more device"
                   if any(n.endswith(".npz") and n not in written for n in taken) else "")
    out.mkdir(parents=True, exist_ok=True)
    write_record(out / record, ours | set(written), f"fedge {command}")
    for stale in sorted(ours - set(written)):
        path = out / stale
        if folder is not None and stale.endswith(".npz") and path.parent == folder and path.is_file() \
                and not path.is_symlink():
            path.unlink()
