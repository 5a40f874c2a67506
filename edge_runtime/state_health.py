"""Whether the device's own state can be read back: what its check-ins say about it.

A device whose state.npz is damaged (a bad SD-card sector) declines every task with
`bad_state`, and the coordinator parks it (coordinator/backoff.py) until it checks in with
something new. So while a model's state cannot be read, the device's check-ins say so (not
eligible, reason `bad_state`), and once it can they no longer do: a person who moves the
damaged file aside, then restarts the device (or waits for its next check-in), changes what
it says, and that un-parks it. Without this a fixed device checked in exactly as before the
damage, and stayed parked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .kernel.errors import DeviceStateError
from .store import DeviceStore

BAD_STATE = DeviceStateError.reason


class StateHealth:
    def __init__(self, home: Path, model_ids: Iterable[str]):
        self.home = home  # the device's own folder: <state_root>/<device_id>
        self.bad = {m for m in model_ids if not self._readable(m)}  # asked once at start

    def failed(self, model_id: str) -> None:
        """A task of this model found its state unreadable."""
        self.bad.add(model_id)

    def reason(self) -> str | None:
        """`bad_state` while a model's state found unreadable still is (asked again each time), else None."""
        self.bad = {m for m in self.bad if not self._readable(m)}
        return BAD_STATE if self.bad else None

    def _readable(self, model_id: str) -> bool:
        folder = self.home / model_id
        if not folder.is_dir():  # no state yet (DeviceStore would make the folder), or a file in its place
            return not os.path.lexists(folder)
        try:
            store = DeviceStore(self.home, model_id)
            store.load_personal()  # reads the whole state file
            store.load_tuned_head()
        except DeviceStateError:
            return False
        return True
