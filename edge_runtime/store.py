"""The device's durable local state, one directory per (device, model).

    personal.npz    personal params (never leave the device)
    global.npz      the shared params of the last task trained: the global model this device
                    holds, which `fedge device export` joins with its personal params
    tuned_head.npz  a global-only model's head_global, tuned on local data (personalize)
    opt_state.npz   optimizer state between tasks (only with TaskHyper.keep_optimizer_state)
    residual.npz    error-feedback residual of the compressor
    control.npz     SCAFFOLD client control variate c_i (shared params' shapes; absent = zeros)
    control_residual.npz   error-feedback residual of the compressed Δc_i uploads
    control_undo.npz       c_i and its residual from before the latest SCAFFOLD upload, with
                           that update's id: put back if the coordinator rejects the upload
    meta.json       last round trained, counters
    staged-<update id>.npz  the state one task moves to, written before the task's update is
                    kept for upload and applied after (stage / commit_staged)

Every write is atomic (temp file, rename), and every file a task's crash safety rests on is
fsync'd first (staged, personal, opt_state, residual, control*), so a power cut leaves the old
or the new version, never a torn one; global.npz and meta.json are not (save_global says why).
A task changes several files; they move together through a
staged file: stage it, make the update durable (the agent's pending store), then apply it.
After a crash, a staged file whose update is durable is applied again (every write is
idempotent), and one whose update is not is discarded, so the state never runs ahead of
what the device will send (the residual and c_i assume their update reaches the coordinator).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .kernel.files import Arrays, atomic_write_bytes, load_npz

_STAGEABLE = ("personal", "opt_state", "residual", "control", "control_residual", "control_undo")


def _staged(update_id: str) -> str:
    return f"staged-{update_id}"


class DeviceStore:
    def __init__(self, root: str | Path, model_id: str):
        self.dir = Path(root) / model_id
        self.dir.mkdir(parents=True, exist_ok=True)

    def _load(self, name: str) -> Arrays | None:
        path = self.dir / f"{name}.npz"
        if not path.exists():
            return None
        return load_npz(path)

    def _save(self, name: str, arrays: Arrays | None, durable: bool = True) -> None:
        path = self.dir / f"{name}.npz"
        if arrays is None:
            path.unlink(missing_ok=True)
            return
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue(), durable=durable)

    def load_personal(self) -> Arrays | None:
        return self._load("personal")

    def save_personal(self, arrays: Arrays) -> None:
        self._save("personal", arrays)

    def load_global(self) -> Arrays | None:
        return self._load("global")

    def save_global(self, arrays: Arrays) -> None:
        # Not fsync'd: only `fedge device export` reads it, and the next task writes it again;
        # a power cut may leave the previous model here (or, on a filesystem that does not
        # order data before rename, an unreadable file that export reports).
        self._save("global", arrays, durable=False)

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

    def clear_control_undo(self) -> None:
        self._save("control_undo", None)

    def stage(self, update_id: str, saves: dict[str, Arrays | None], meta: dict) -> None:
        """Write, as one file, the state a task moves to (None deletes that file); nothing is applied."""
        arrays: Arrays = {"//meta": np.array(json.dumps(meta, sort_keys=True))}
        for name, value in saves.items():
            if name not in _STAGEABLE:
                raise ValueError(f"cannot stage {name!r}; one of {_STAGEABLE}")
            arrays[f"{name}//kind"] = np.array("none" if value is None else "arrays")
            arrays.update({f"{name}/{k}": v for k, v in (value or {}).items()})
        self._save(_staged(update_id), arrays)

    def staged(self) -> list[str]:
        """Update ids with a staged state not yet applied."""
        return sorted(p.name[len("staged-"):-len(".npz")] for p in self.dir.glob("staged-*.npz"))

    def commit_staged(self, update_id: str) -> None:
        """Apply a staged state, then forget it. Safe to repeat after a crash part-way."""
        arrays = self._load(_staged(update_id))
        if arrays is None:
            return
        saves: dict[str, Arrays | None] = {}
        for key, value in arrays.items():
            name, _, rest = key.partition("/")
            if rest == "/kind":
                saves.setdefault(name, {} if str(value) == "arrays" else None)
            elif name and rest:
                saves.setdefault(name, {})[rest] = value
        for name, value in saves.items():
            self._save(name, value)
        self.save_meta(json.loads(str(arrays["//meta"])))
        self._save(_staged(update_id), None)

    def discard_staged(self, update_id: str) -> None:
        self._save(_staged(update_id), None)

    def load_meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_meta(self, meta: dict) -> None:
        # Not fsync'd: nothing reads it back to decide anything (last round trained, for people).
        atomic_write_bytes(self.dir / "meta.json", json.dumps(meta, sort_keys=True).encode(), durable=False)
