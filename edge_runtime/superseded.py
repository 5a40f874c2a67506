"""A model's state written for other contents: set aside, kept a while, put back if they return.

A device's private state (personal head, optimizer state, residuals, SCAFFOLD's c_i, the global
model kept for export, a tuned head) is only meaningful for the model it was trained with, and
the model id is the coordinator's word: the same id announced with another backbone of the
same shapes, or an artifact folder replaced on disk, kept training the old head on the new
features, silently. So state.npz, global.npz and tuned_head.npz record the state key of the
model they were written for (kernel/manifest.state_key, KEY_FIELD in the file), and a
DeviceStore opened with a key moves each one that holds another key (meta.json goes with
state.npz) into a new folder `superseded-<n>-<16 hex of its key>/` beside it (n counts up), with
a log line; the device then starts that part afresh. When a model's contents come back, the
files of their newest such folder are moved back. The KEEP_SUPERSEDED folders set aside last
are kept; from older ones only the files named here are deleted, and a folder that then holds
anything else is left as it is (as is anything not named like these folders).

A file without a key (written by a fedge from before keys) is taken as the current model's: the
device keeps its state across the upgrade, and the first write records the key.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .kernel.errors import DeviceStateError
from .kernel.files import load_npz

log = logging.getLogger("fedge.store")

KEY_FIELD = "//key"  # in each keyed file: the state key (32 hex) of the model it was written for
KEYED = ("state.npz", "global.npz", "tuned_head.npz")
_WITH_STATE = "meta.json"  # moves with state.npz (it says which round that state last trained)
PREFIX = "superseded-"
KEEP_SUPERSEDED = 2
_HEX_KEY = re.compile(r"[0-9a-f]{32}")
_FOLDER = re.compile(re.escape(PREFIX) + r"([0-9]{1,9})-([0-9a-f]{16}|unknown)")


def held_key(path: Path) -> str | None:
    """The key a keyed file records; None when there is no file, no key in it, or it cannot be
    read (the load that needs it then says so, as before keys)."""
    try:
        arrays = load_npz(path, only=(KEY_FIELD,)) if path.is_file() else {}
    except Exception:  # noqa: BLE001 - whatever np.load raises on a damaged file: its reader names it
        return None
    value = arrays.get(KEY_FIELD)
    if value is None:
        return None
    return str(value) if value.dtype.kind == "U" and value.ndim == 0 else "?"  # "?": matches no model


def foreign(folder: Path, key: str) -> list[str]:
    """The keyed files in `folder` written for a model other than `key`, read only."""
    return [name for name in KEYED if held_key(folder / name) not in (None, key)]


def supersede(folder: Path, key: str) -> None:
    """Set aside what was written for other contents, and put back what was written for `key`."""
    asides: dict[str, Path] = {}  # the held key -> its folder, made new this call
    for name in foreign(folder, key):
        held = held_key(folder / name) or "?"
        if held not in asides:
            asides[held] = _aside(folder, held)
        aside = asides[held]
        try:  # an older copy there is fedge's own, of the same contents
            os.replace(folder / name, aside / name)
            if name == KEYED[0] and (folder / _WITH_STATE).is_file():
                os.replace(folder / _WITH_STATE, aside / _WITH_STATE)
        except OSError as exc:  # a folder in the file's place there, a read-only state folder
            _remove_if_empty(aside)  # made for it: one more empty folder at each try, each check-in
            raise DeviceStateError(f"{folder / name} was written for other model contents and cannot be set "
                                   f"aside ({exc}); move it aside") from None
        log.warning("%s was written for model contents %s, not the %s this model has now (the same id, other "
                    "files): set aside in %s; this part of the state starts afresh", folder / name, held[:16],
                    key[:16], aside)
    for _, short, back in reversed(_folders(folder)):
        if short == _short(key):  # the newest set aside for these contents
            _restore(folder, back, key)
            break
    for _, _, old in _folders(folder)[:-KEEP_SUPERSEDED]:
        _prune(old)


def _short(key: str) -> str:
    return key[:16] if _HEX_KEY.fullmatch(key) else "unknown"


def _folders(folder: Path) -> list[tuple[int, str, Path]]:
    """(number, short key, path) of each folder set aside here, oldest first: numbered in turn,
    not by mtime, which any change inside moves and which ties within a clock tick."""
    found = []
    for d in folder.glob(f"{PREFIX}*"):
        match = _FOLDER.fullmatch(d.name)
        if match and d.is_dir() and not d.is_symlink():
            found.append((int(match.group(1)), match.group(2), d))
    return sorted(found)


def _aside(folder: Path, held: str) -> Path:
    """A new folder for the state of `held`, numbered after the newest. A file (or link) by that
    name is not fedge's and is left as it is: the next free number is taken. Refusing there
    declined every task of the new contents, while the check-ins said the state was fine: the
    device went between parked and eligible, and declined each task it got."""
    number = max((n for n, _, _ in _folders(folder)), default=0) + 1
    while True:
        aside = folder / f"{PREFIX}{number}-{_short(held)}"
        try:
            aside.mkdir()
            return aside
        except FileExistsError:
            number += 1
        except OSError as exc:  # a read-only state folder, a full disk: a bare OSError escaped handle_task
            raise DeviceStateError(f"{folder} holds state written for other model contents, and {aside} to set "
                                   f"it aside in cannot be made ({exc}); its tasks are declined until it can") from None


def _restore(folder: Path, back: Path, key: str) -> None:
    for name in KEYED:
        if (back / name).is_file() and not os.path.lexists(folder / name) and held_key(back / name) == key:
            os.replace(back / name, folder / name)
            if name == KEYED[0] and (back / _WITH_STATE).is_file() and not os.path.lexists(folder / _WITH_STATE):
                os.replace(back / _WITH_STATE, folder / _WITH_STATE)
            log.warning("%s: the state written for model contents %s is back in use", folder / name, key[:16])
    _remove_if_empty(back)


def _prune(old: Path) -> None:
    ours = [old / name for name in (*KEYED, _WITH_STATE) if (old / name).is_file() and not (old / name).is_symlink()]
    for path in ours:
        path.unlink(missing_ok=True)
    if _remove_if_empty(old):
        log.info("%s: deleted, the state of model contents older than the %d kept", old, KEEP_SUPERSEDED)
    elif ours:  # said once: the next time nothing of fedge's is left in it
        log.warning("%s: fedge's files deleted, the folder left: it holds files fedge did not put there", old)


def _remove_if_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except OSError:
        return False
    return True
