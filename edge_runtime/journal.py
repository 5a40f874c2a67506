"""The device journal: everything a device must remember about its tasks across a crash.

    seen_tasks.json   tasks received, and whether each was answered (seen_tasks.py)
    pending/          updates kept until the coordinator acknowledges them (pending.py)
    <model>/staged-*  a task's new local state, between staging and applying it (store.py)

One task moves all three, in an order that survives a crash at any step (`record`):

    1. stage the task's new state        (store.stage; nothing applied yet)
    2. keep its update                   (pending.add: the commit point)
    3. apply the staged state            (store.commit_staged)

and `recover` finishes or undoes what a crash interrupted: a staged state whose update was
kept is applied (every write is idempotent), one whose update was not is dropped, so the
state never runs ahead of what the device will send. A task received but never answered is
`interrupted`, and the agent declines it at the next start. The runtime writes a task's
state through `record`; the agent reads and clears the rest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from .kernel.clock import SystemClock
from .kernel.codec import decode_message, encode_message
from .kernel.device_folder import NOT_A_MODEL_FOLDER, PENDING_DIR, SEEN_TASKS_FILE
from .kernel.errors import CodecError, DeviceStateError, PayloadTooLarge, StateWriteError, UnsafeModelId
from .kernel.files import Arrays, set_aside, sweep_temp_files
from .kernel.protocol import Update
from .pending import PendingUploads
from .seen_tasks import SeenTasks
from .store import DeviceStore

log = logging.getLogger("fedge.journal")

SEEN_TASKS_KEPT = 256  # task ids remembered across restarts, so a redelivered task is not trained twice


def commit_task_state(store: DeviceStore, update_id: str, saves: dict[str, Arrays | None], meta: dict,
                      keep: Callable[[], object]) -> None:
    """Stage, keep, apply (see the module docstring). If `keep` raises, nothing was kept and
    the staged state goes; a dying process runs no handler, and `recover` decides then. A write
    that fails (ENOSPC, EROFS) before the update is kept is StateWriteError, which the task is
    declined with: as a bare OSError it escaped handle_task and the task was never answered."""
    try:
        store.stage(update_id, saves, meta)
        try:
            keep()
        except Exception:
            with contextlib.suppress(OSError):  # else `recover` drops it at the next start
                store.discard_staged(update_id)
            raise
    except OSError as exc:
        raise StateWriteError(f"the device cannot write its state ({exc}); nothing of this task was kept") from exc
    store.commit_staged(update_id)


class DeviceJournal:
    def __init__(self, home: str | Path, max_message_bytes: int = 64 << 20, clock=None,
                 kept_tasks: int = SEEN_TASKS_KEPT):
        self.home = Path(home)
        self.max_message_bytes = max_message_bytes
        self.pending = PendingUploads(self.home / PENDING_DIR, clock or SystemClock(), max_message_bytes)
        self.seen = SeenTasks(self.home / SEEN_TASKS_FILE, kept_tasks)
        self._set_aside_foreign()

    def _set_aside_foreign(self) -> None:
        """Set aside (`.damaged`) each kept frame that is not the Update its file name says: one
        that no longer decodes (a bad sector), or another message (a CheckIn by that name raised
        AttributeError at every start, from `interrupted`)."""
        for item in self.pending.items():
            try:
                update = decode_message(item.payload)
                why = "" if isinstance(update, Update) and update.update_id == item.update_id else (
                    f"it holds a {type(update).__name__}" + (f" for update {update.update_id}"
                                                             if isinstance(update, Update) else ""))
            except CodecError as exc:
                why = str(exc)
            if why:
                log.error("device %s: set aside kept update %s of round %d: %s (now %s)", self.home.name,
                          item.update_id, item.round_id, why, self.pending.set_aside(item.update_id))

    # ---------------------------------------------------------------- updates

    def keep(self, update: Update) -> bytes:
        """Keep the encoded update until its Ack; PayloadTooLarge if it could never be sent."""
        payload = encode_message(update)
        if len(payload) > self.max_message_bytes:  # never store what can never be sent
            raise PayloadTooLarge(f"update of {len(payload)} bytes > {self.max_message_bytes}")
        self.pending.add(update.round_id, update.update_id, payload)
        return payload

    def record(self, store: DeviceStore, update: Update, saves: dict[str, Arrays | None], meta: dict) -> None:
        """A task's new local state and its update, crash-safe: stage, keep, apply."""
        commit_task_state(store, update.update_id, saves, meta, lambda: self.keep(update))

    def kept(self, update_id: str) -> bytes | None:
        """The kept payload of an update, or None."""
        item = self.pending.get(update_id)
        return item.payload if item is not None else None

    def recover(self) -> None:
        """After a restart: delete the temp files of writes a crash cut short, apply the staged
        state of every update that was kept, and drop the staged state of those that were not
        (their task was never answered). A kept update's staged state that cannot be read is
        set aside (`.damaged`): it stopped every start with DeviceStateError; the update is
        still sent, and the state stays as it was before that task. A folder whose name is no
        model id (kernel/device_folder.py) is left as it is, with a `not_a_model_folder` line."""
        for path in sweep_temp_files(self.home):
            log.warning("device %s: deleted %s, left by a write that a crash cut short", self.home.name, path)
        for folder in sorted({path.parent for path in self.home.glob("*/staged-*.npz")}):
            try:
                store = DeviceStore(self.home, folder.name)
            except UnsafeModelId as exc:  # a folder no model owns: it stopped every start
                log.error("device %s: %s: %s is no model's state folder, left as it is: %s", self.home.name,
                          NOT_A_MODEL_FOLDER, folder, exc)
                continue
            for update_id in store.staged():
                if update_id in self.pending:
                    try:
                        store.commit_staged(update_id, verify=True)
                    except DeviceStateError as exc:
                        aside = set_aside(store.staged_path(update_id))
                        log.error("device %s: set aside %s: %s; update %s is still sent, the state stays as "
                                  "before its task", self.home.name, aside, exc, update_id)
                else:
                    log.warning("device %s: dropping the state of update %s: it was never kept for upload",
                                self.home.name, update_id)
                    store.discard_staged(update_id)

    # ---------------------------------------------------------------- tasks

    def received(self, task_id: str, round_id: int) -> None:
        self.seen.add(task_id, round_id)

    def __contains__(self, task_id: str) -> bool:
        """True if this task was received before, by this run or an earlier one. A kept update
        names its task too: the seen-task file is not fsync'd (seen_tasks.py), so after a power
        cut the pending update may be the only record that the task was answered."""
        return task_id in self.seen or task_id in self._kept_tasks()

    def _kept_tasks(self) -> set[str]:
        return {task_id for item in self.pending.items() if (task_id := _task_of(item.payload)) is not None}

    def answered(self, task_id: str) -> None:
        self.seen.answered(task_id)

    def acknowledged(self, task_id: str, update_id: str, round_id: int | None = None) -> bool:
        """The coordinator has the update: forget it. With round_id, a task the seen-task file
        lost in a power cut is recorded again, so a copy of it is answered, not trained again.

        False, and nothing changed, for an Ack naming another task than the kept update's: it
        recorded that task as answered, and when the task came it was neither trained nor answered."""
        kept = self.pending.get(update_id)
        if kept is not None and _task_of(kept.payload) != task_id:
            log.warning("an Ack names task %s for update %s of task %s; ignored", task_id, update_id,
                        _task_of(kept.payload))
            return False
        self.seen.answered(task_id, round_id)  # before the update goes: a pending update says "answered" until then
        self.pending.remove(update_id)
        return True

    def interrupted(self) -> list[tuple[str, int]]:
        """(task_id, round_id) of tasks received and never answered, without a kept update:
        a previous run stopped while training them, or while waiting for their model."""
        kept = self._kept_tasks()
        return [(task_id, round_id) for task_id, round_id in self.seen.unanswered() if task_id not in kept]


def _task_of(payload: bytes) -> str | None:
    """The task id of a kept update's frame, or None if it does not decode."""
    try:
        return decode_message(payload).task_id
    except CodecError:
        return None
