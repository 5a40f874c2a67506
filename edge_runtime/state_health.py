"""Whether the device's own state can be read back: what its check-ins say about it.

A device whose state.npz is damaged (a bad SD-card sector) declines every task with
`bad_state`, and the coordinator parks it (coordinator/backoff.py) until it checks in with
something new. So while a model's state cannot be read, the device's check-ins say so (not
eligible, reason `bad_state`), and once it can they no longer do: a person who moves the
damaged file aside, then restarts the device (or waits for its next check-in), changes what
it says, and that un-parks it. Without this a fixed device checked in exactly as before the
damage, and stayed parked. What no task reads is not asked: a damaged tuned_head.npz (written by
personalize, read by nothing else) said `bad_state` while every task trained, and nothing ever set
it aside, so the device stayed parked for good.

A task that found state written for other model contents it could not set aside (superseded.py:
a read-only folder) is asked again with the key of the contents it had: a store opened without
one sets nothing aside, found that state readable, and un-parked the device at once, which then
declined the next task the same way, and so on. Asked with the key, the check-in sets the state
aside as a task would, and says `bad_state` until it can.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from .kernel.errors import DeviceStateError
from .store import DeviceStore

BAD_STATE = DeviceStateError.reason


class StateHealth:
    def __init__(self, home: Path, model_ids: Iterable[str]):
        self.home = home  # the device's own folder: <state_root>/<device_id>
        # model id -> the state key its failed task used (None: not known), asked once at start
        self.bad: dict[str, str | None] = {m: None for m in model_ids if not self._readable(m, None)}

    def failed(self, model_id: str, key: str | None = None) -> None:
        """A task of this model, for the contents of state key `key`, found its state unreadable."""
        self.bad[model_id] = key

    def reason(self, busy: threading.Lock | None = None) -> str | None:
        """`bad_state` while a model's state found unreadable still is (asked again each time), else None.

        busy: the runtime's task lock. Asked with a key, the check moves state files (supersede), so
        it runs only when the lock is free, and never waits for it: while a task (or an evaluation)
        runs, the last answer stands. It once moved files under a task in progress."""
        if busy is None:
            self._recheck()
        elif busy.acquire(blocking=False):
            try:
                self._recheck()
            finally:
                busy.release()
        return BAD_STATE if self.bad else None

    def _recheck(self) -> None:
        self.bad = {m: key for m, key in self.bad.items() if not self._readable(m, key)}

    def _readable(self, model_id: str, key: str | None) -> bool:
        folder = self.home / model_id
        if not folder.is_dir():  # no state yet (DeviceStore would make the folder), or a file in its place
            return not os.path.lexists(folder)
        try:
            store = DeviceStore(self.home, model_id, key=key)  # with a key: sets aside what a task would
            store.load_personal()  # reads the whole state file (not tuned_head.npz: no task reads it)
        except DeviceStateError:
            return False
        return True
