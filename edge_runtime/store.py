"""The device's durable local state, one directory per (device, model).

    state.npz       what a task moves, in one file: personal params (never leave the device),
                    opt_state (optimizer state between tasks, only with
                    TaskHyper.keep_optimizer_state), residual (error-feedback residual of the
                    compressor), control (SCAFFOLD's client control variate c_i; absent =
                    zeros), control_residual (error-feedback residual of the compressed Δc_i
                    uploads), control_undo (c_i and its residual from before the latest SCAFFOLD
                    upload, with that update's id: put back if the coordinator rejects it)
    staged-<update id>.npz  the whole state.npz one task moves to, written before the task's
                    update is kept for upload; applying it is renaming it to state.npz
    global.npz      the newest global model this device received (its last task's, or a newer
                    one it evaluated), with its version: what `fedge device export` joins with
                    its personal params
    tuned_head.npz  a global-only model's head_global, tuned on local data (personalize)
    meta.json       last round trained, counters
    superseded-<n>-<key>/  the files above as written for other contents of this model id (superseded.py)

state.npz, global.npz and tuned_head.npz record the state key of the model contents they were
written for (kernel/manifest.state_key); a store opened with a key sets aside those written
for another (superseded.py).

Why one state file: a task changes several parts of the state, and they must move together.
With a file per part, each applied part was an fsync of its own (four durable writes per task,
`fedge bench ingest`); with one file, the staged file *is* the next state, fsynced once, and
applying it is a rename. A task costs two durable writes: the staged state and the kept update
(journal.py). A power cut before the rename reached the disk leaves the staged file, which
`recover` applies again when its update was kept; the rename and the later deletion of the
kept update (at its Ack) are ordered by a journaling filesystem (ext4 in its default mode), as
every rename here is (no directory fsync, README "What a device writes to disk").

Every write is atomic (temp file, rename). state.npz written outside a task (save_personal
after personalize or a head refit at an evaluation (head_refit.py), save_residual by a
secure-aggregation round, the SCAFFOLD undo) is fsynced
too, so a power cut leaves the old or the new version, never a torn one; global.npz and
meta.json are not (save_global says why). A device that ran an older fedge holds a file per
part (personal.npz, residual.npz, ...): they are read while no state.npz exists, and deleted
once state.npz holds them.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from .kernel.errors import DeviceStateError, StateWriteError
from .kernel.files import Arrays, atomic_write_bytes, load_npz
from .kernel.manifest import check_model_id
from .superseded import KEY_FIELD, held_key, supersede

log = logging.getLogger("fedge.store")

_STAGEABLE = ("personal", "opt_state", "residual", "control", "control_residual", "control_undo")
_STATE = "state"
_META_KEY = "//meta"
_VERSION_KEY = "//version"  # in global.npz: the model version it holds
_WHOLE_KEY = "//whole"  # in a staged file that holds the whole state (absent: an older, partial one)

State = dict[str, Arrays]  # part name -> its arrays; a part that is absent is None


def _read(path: Path, only: tuple[str, ...] | None = None) -> Arrays:
    """load_npz, with a damaged file (a bad SD-card sector, a torn write) a DeviceStateError
    that names it. np.load reports damage as BadZipFile, ValueError, EOFError, TokenError,
    NotImplementedError, ... (a bit flip can reach any of its parsers): as a bare exception it
    escaped handle_task, so every task was left unanswered and each round waited for its deadline;
    a named error is declined as `bad_state`."""
    try:
        return load_npz(path, only)
    except Exception as exc:
        raise DeviceStateError(f"{path} cannot be read ({type(exc).__name__}: {exc}); move it aside "
                               "to start this part of the device's state over") from exc


def _staged(update_id: str) -> str:
    return f"staged-{update_id}"


def _encode(state: State) -> Arrays:
    """Parts as one flat set of arrays: `name//kind` marks a part present (an empty one too)."""
    arrays: Arrays = {}
    for name, value in state.items():
        bad = [k for k in value if k in ("", "/kind")]
        if bad:  # they would read back as the part's marker, or not at all
            raise ValueError(f"{name}: array names {bad} cannot be stored")
        arrays[f"{name}//kind"] = np.array("arrays")
        arrays.update({f"{name}/{k}": v for k, v in value.items()})
    return arrays


def _decode(arrays: Arrays) -> dict[str, Arrays | None]:
    """The parts of _encode's arrays (and of an older staged file: `kind` "none" = delete it)."""
    parts: dict[str, Arrays | None] = {}
    for key, value in arrays.items():
        name, _, rest = key.partition("/")
        if rest == "/kind":
            parts.setdefault(name, {} if str(value) == "arrays" else None)
        elif name and rest:  # a param's own name may hold "/" (even begin with it)
            part = parts.setdefault(name, {})
            if part is None:
                raise ValueError(f"part {name!r} is marked absent but holds {rest!r}")
            part[rest] = value
    return parts


def _parts(path: Path, arrays: Arrays) -> dict[str, Arrays | None]:
    """_decode, with what no state holds (text or objects where numbers go, NaN or Inf, a part
    marked both absent and present: a bit flip, a file from elsewhere) a DeviceStateError that
    names the file. They escaped handle_task as a bare TypeError or ValueError from the maths
    (np.square of text, clipping a NaN residual), and the task was never answered."""
    try:
        parts = _decode(arrays)
        for name, part in parts.items():
            for key, value in (part or {}).items():
                if name == "control_undo" and key == "update_id":
                    if value.dtype.kind != "U" or value.ndim:
                        raise ValueError(f"{name}/{key} is {value.dtype} of shape {value.shape}, not a text id")
                elif value.dtype.kind not in "biuf" or value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise ValueError(f"{name}/{key} holds {value.dtype} values that are not finite numbers")
    except ValueError as exc:
        raise DeviceStateError(f"{path} is damaged ({exc}); move it aside to start this part of the device's "
                               "state over") from exc
    return parts


class DeviceStore:
    def __init__(self, root: str | Path, model_id: str, key: str | None = None):
        """key: the state key of the model contents in use (ModelRuntime.state_key); what was
        written for other contents is set aside. None (reading, or writing a part back): files
        keep the key they hold."""
        self.dir = Path(root) / check_model_id(model_id)  # a folder of its own under root, never a path
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file by the folder's name: a bare OSError escaped handle_task
            raise DeviceStateError(f"{self.dir} is not a folder; move it aside to start this model's state "
                                   "over") from None
        except OSError as exc:  # a read-only or full state root: a bare OSError escaped handle_task too.
            # Not DeviceStateError: bad_state parks the device, and its check-ins (state_health.py,
            # no folder: nothing to read) would never say anything new; space may come back.
            raise StateWriteError(f"{self.dir} cannot be made ({exc}); the model's tasks are declined until "
                                  "its state folder can be made") from None
        # state.npz parsed once per store (a task reads it about six times): kept with the
        # file's (inode, size, mtime) and dropped at every write through this store. A store
        # lives for one task, and the device writes its state from one loop, so another
        # writer changing the file under the same key is not a case that arises.
        self._parsed: tuple[tuple[int, int, int], State] | None = None
        self.key = key
        if key is not None:
            supersede(self.dir, key)

    def _load(self, name: str) -> Arrays | None:
        if name in _STAGEABLE:
            return self._state().get(name)
        path = self.dir / f"{name}.npz"
        if not path.exists():
            return None
        return {k: v for k, v in _read(path).items() if k != KEY_FIELD}

    def _save(self, name: str, arrays: Arrays | None, durable: bool = True) -> None:
        if name in _STAGEABLE:
            self.save_state({name: arrays})
            return
        path = self.dir / f"{name}.npz"
        if arrays is None:
            path.unlink(missing_ok=True)
            return
        atomic_write_bytes(path, _npz(self._keyed(path, arrays)), durable=durable)

    def _keyed(self, path: Path, arrays: Arrays) -> Arrays:
        """`arrays` with the key of the contents they belong to: the store's, else the one `path` holds."""
        key = self.key or held_key(path)
        return arrays if key is None else {**arrays, KEY_FIELD: np.array(key)}

    # ---------------------------------------------------------------- the state file

    def _state(self) -> State:
        """The state's parts, copies the caller may change."""
        path = self.dir / f"{_STATE}.npz"
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None:
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._parsed is None or self._parsed[0] != key:
                self._parsed = (key, {k: v for k, v in _parts(path, _read(path)).items() if v is not None})
            return {name: {k: v.copy() for k, v in part.items()} for name, part in self._parsed[1].items()}
        legacy = {name: _read(self.dir / f"{name}.npz") for name in _STAGEABLE
                  if (self.dir / f"{name}.npz").exists()}
        return legacy

    def save_state(self, saves: dict[str, Arrays | None]) -> None:
        """Change parts of the state (None deletes one) in one durable write, outside a task."""
        path = self.dir / f"{_STATE}.npz"
        arrays = self._keyed(path, _encode(self._moved(saves)))
        self._parsed = None
        atomic_write_bytes(path, _npz(arrays))
        self._drop_legacy()

    def _moved(self, saves: dict[str, Arrays | None]) -> State:
        for name in saves:
            if name not in _STAGEABLE:
                raise ValueError(f"cannot stage {name!r}; one of {_STAGEABLE}")
        state = self._state()
        for name, value in saves.items():
            if value is None:
                state.pop(name, None)
            else:
                state[name] = value
        return state

    def _drop_legacy(self) -> None:
        for name in _STAGEABLE:  # an older fedge's file per part: state.npz holds them now
            (self.dir / f"{name}.npz").unlink(missing_ok=True)

    # ---------------------------------------------------------------- parts

    def load_personal(self) -> Arrays | None:
        return self._load("personal")

    def save_personal(self, arrays: Arrays) -> None:
        self._save("personal", arrays)

    def load_global(self) -> Arrays | None:
        arrays = self._load("global")
        return None if arrays is None else {k: v for k, v in arrays.items() if k != _VERSION_KEY}

    def global_version(self) -> int | None:
        """The model version of global.npz, read without its arrays (keep_global asks on every
        task); None when there is none, an older fedge wrote it, or a power cut left it
        unreadable (save_global does not fsync it): then the next model received replaces it.
        Unreadable is whatever np.load raises (_read): an empty file, what that power cut leaves on
        a filesystem that does not order data before the rename, raised EOFError out of every
        task, none answered; so did a version that is no integer (a bit flip)."""
        path = self.dir / "global.npz"
        try:
            held = _read(path, only=(_VERSION_KEY,)) if path.exists() else {}
            return int(held[_VERSION_KEY]) if _VERSION_KEY in held else None
        except (DeviceStateError, TypeError, ValueError, OverflowError):
            return None

    def save_global(self, arrays: Arrays, version: int | None = None) -> None:
        # Not fsync'd: only `fedge device export` reads it, and the next task writes it again;
        # a power cut may leave the previous model here (or, on a filesystem that does not
        # order data before rename, an unreadable file that export reports).
        # Nor is a full disk an error here: the export keeps the previous model a while longer.
        extra = {} if version is None else {_VERSION_KEY: np.array(version, np.int64)}
        try:
            self._save("global", {**arrays, **extra}, durable=False)
        except OSError as exc:
            log.warning("%s not written: %s", self.dir / "global.npz", exc)

    def keep_global(self, arrays: Arrays, version: int, announced: int | None) -> bool:
        """Save a global model received (a task's or an evaluated one) unless global.npz holds a
        newer version of the same federation: an async task delayed past a newer evaluation
        would put the export a version back. `announced` is the coordinator's latest announced
        version; below what is held, the coordinator started over (a new state database counts
        from 0 again) and the held model is from before, so it is replaced. Whether it was saved."""
        held = self.global_version()
        if held is not None and version < held and (announced is None or announced >= held):
            return False
        self.save_global(arrays, version)
        return True

    def load_tuned_head(self) -> Arrays | None:
        return self._load("tuned_head")

    def save_tuned_head(self, arrays: Arrays) -> None:
        self._save("tuned_head", arrays)

    def load_opt_state(self) -> Arrays | None:
        return self._load("opt_state")

    def save_opt_state(self, arrays: Arrays | None) -> None:
        self._save("opt_state", arrays)

    def load_residual(self) -> Arrays | None:
        return self._load("residual")

    def save_residual(self, arrays: Arrays | None) -> None:
        self._save("residual", arrays)

    def load_control(self) -> Arrays | None:
        return self._load("control")

    def save_control(self, arrays: Arrays | None) -> None:
        self._save("control", arrays)

    def load_control_residual(self) -> Arrays | None:
        return self._load("control_residual")

    def save_control_residual(self, arrays: Arrays | None) -> None:
        self._save("control_residual", arrays)

    def save_control_undo(self, update_id: str, control: Arrays, residual: Arrays | None) -> None:
        self._save("control_undo", self.undo_arrays(update_id, control, residual))

    @staticmethod
    def undo_arrays(update_id: str, control: Arrays, residual: Arrays | None) -> Arrays:
        """What save_control_undo writes, for staging it with the rest of a task's state."""
        arrays = {f"control/{k}": v for k, v in control.items()}
        arrays.update({f"residual/{k}": v for k, v in (residual or {}).items()})
        return {**arrays, "update_id": np.array(update_id)}

    def load_control_undo(self) -> tuple[str, Arrays, Arrays | None] | None:
        """(update id, c_i before it, residual before it or None), or None."""
        arrays = self._load("control_undo")
        if arrays is None:
            return None
        parts: dict[str, Arrays] = {"control": {}, "residual": {}}
        for key, value in arrays.items():
            if "/" in key:
                kind, name = key.split("/", 1)
                parts[kind][name] = value
        return str(arrays["update_id"]), parts["control"], parts["residual"] or None

    # ---------------------------------------------------------------- a task's move

    def stage(self, update_id: str, saves: dict[str, Arrays | None], meta: dict) -> None:
        """Write the whole state the task moves to (None deletes that part) as one durable
        file; nothing is applied."""
        arrays = self._keyed(self.dir / f"{_STATE}.npz", _encode(self._moved(saves)))
        arrays[_META_KEY] = np.array(json.dumps(meta, sort_keys=True))
        arrays[_WHOLE_KEY] = np.array(True)
        atomic_write_bytes(self.staged_path(update_id), _npz(arrays))

    def staged(self) -> list[str]:
        """Update ids with a staged state not yet applied, oldest first."""
        # Files only: a folder by that name is not fedge's (unlink failed on it, stopping the start).
        paths = sorted((p for p in self.dir.glob("staged-*.npz") if p.is_file() and not p.is_symlink()),
                       key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.name[len("staged-"):-len(".npz")] for p in paths]

    def commit_staged(self, update_id: str, verify: bool = False) -> None:
        """Apply a staged state (a rename), then note the task in meta.json. Safe to repeat
        after a crash part-way: a staged file that is gone was applied.

        verify: read the whole staged state first (DeviceStateError if it cannot be), as a
        restart does (journal.recover): only its head is read otherwise, and a staged file
        damaged past its head (a bad sector, a bit flip in one array) replaced a good
        state.npz, which then declined every task as bad_state. Right after stage() the file
        was just written, and is not read again."""
        path = self.staged_path(update_id)
        if not path.exists():
            return
        head = _read(path, only=(_META_KEY, _WHOLE_KEY))  # not the state's arrays
        try:
            meta = json.loads(str(head[_META_KEY]))
        except (KeyError, ValueError) as exc:  # a readable file without the meta stage() writes
            raise DeviceStateError(f"{path} holds no task meta ({type(exc).__name__}: {exc})") from exc
        whole = _WHOLE_KEY in head
        if verify:
            _parts(path, _read(path))
        self._parsed = None
        if whole:
            os.replace(path, self.dir / f"{_STATE}.npz")  # its bytes were fsynced by stage()
            self._drop_legacy()
        else:  # staged by an older fedge: only the parts its task changed
            arrays = _read(path)
            self.save_state(_parts(path, {k: v for k, v in arrays.items() if k != _META_KEY}))
            path.unlink()
        self.save_meta(meta)

    def discard_staged(self, update_id: str) -> None:
        self.staged_path(update_id).unlink(missing_ok=True)

    def staged_path(self, update_id: str) -> Path:
        return self.dir / f"{_staged(update_id)}.npz"

    def load_meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_meta(self, meta: dict) -> None:
        # Not fsync'd: nothing reads it back to decide anything (last round trained, for people);
        # nor is a full disk an error here: the task's state is applied before it.
        try:
            atomic_write_bytes(self.dir / "meta.json", json.dumps(meta, sort_keys=True).encode(), durable=False)
        except OSError as exc:
            log.warning("%s not written: %s", self.dir / "meta.json", exc)


def _npz(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
