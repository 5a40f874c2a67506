"""The devices the coordinator knows: a read-only mapping device_id -> DeviceRecord, changed
only through `register`, `seen`, `park` and `restore`, so the eligible count and the store follow.
A parked device (backoff.py) stays out of `eligible_devices` until it checks in with something new.

The store's last_seen_wall is written when anything else about the device changed, and when it
is LAST_SEEN_WRITE_S old: a device checking in with the same facts for weeks kept the wall time
of its first check-in, and `fedge coordinator forget-devices` (forget_devices.py), which reads
that column, would have taken it for a device unseen all that time. Six hours bounds the writes
at four a day per device checking in (a full default registry of 1,000,000: 46 SQLite commits
a second, 0.5 ms each on a quiet machine) and keeps the column within 6 h of the truth."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from . import backoff
from .records import DeviceRecord
from .store import Store, StoredDevice

LAST_SEEN_WRITE_S = 6 * 3600.0  # a device's stored last_seen_wall is at most this stale while it checks in


class Registry(Mapping[str, DeviceRecord]):
    def __init__(self, store: Store):
        self.store = store
        self._devices: dict[str, DeviceRecord] = {}
        self.eligible = 0  # devices whose last check-in said eligible

    def __getitem__(self, device_id: str) -> DeviceRecord:
        return self._devices[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def eligible_devices(self) -> list[str]:
        return [d.device_id for d in self._devices.values() if d.eligible and not d.parked]

    def register(self, device_id: str, eligible: bool, reason: str, num_examples: int, now: float,
                 wall: float, checkin: str | None = None) -> None:
        """A check-in (`checkin` = its backoff.fingerprint) or a last will (None): the record is
        replaced, a parked device stays parked unless the check-in says something new; the store
        is written when something other than last_seen changed, or its last_seen_wall is
        LAST_SEEN_WRITE_S old (module docstring)."""
        old = self._devices.get(device_id)
        parked = old.parked if old else ""
        if checkin is not None:
            parked = backoff.parked_after(parked, old.checkin if old else None, checkin)
        else:
            checkin = old.checkin if old else None
        stored = old.stored_wall if old is not None else wall
        # abs(): a wall clock stepped back (a board without a real-time clock, before NTP) is written too
        if (old is None or (old.eligible, old.reason, old.num_examples) != (eligible, reason, num_examples)
                or abs(wall - stored) >= LAST_SEEN_WRITE_S):
            self.store.save_device(StoredDevice(device_id, wall, eligible, reason, num_examples))
            stored = wall
        self._devices[device_id] = DeviceRecord(device_id, now, eligible, reason, num_examples, parked, checkin,
                                                stored)
        self.eligible += int(eligible) - int(old is not None and old.eligible)

    def seen(self, device_id: str | None, now: float) -> None:
        """A known device sent something: it is alive."""
        if device_id in self._devices:
            self._devices[device_id].last_seen = now

    def ineligible_reasons(self) -> Counter[str]:
        """Why the known devices are not eligible, by reason (a parked one as parked:<reason>);
        reasons are the devices' words, so each is cut to 40 characters."""
        why: Counter[str] = Counter()
        for d in self._devices.values():
            if d.parked:
                why[f"parked:{d.parked}"[:40]] += 1
            elif not d.eligible:
                why[(d.reason or "ineligible")[:40]] += 1
        return why

    def park(self, device_id: str, reason: str) -> None:
        """A permanent decline (backoff.is_permanent): not selected until it checks in anew."""
        if device_id in self._devices:
            self._devices[device_id].parked = reason

    def restore(self, now: float, wall: float) -> None:
        """Load the stored devices; last_seen moves into this process's clock by its wall age."""
        for d in self.store.load_devices():
            self._devices[d.device_id] = DeviceRecord(d.device_id, now - max(0.0, wall - d.last_seen_wall),
                                                      d.eligible, d.reason, d.num_examples,
                                                      stored_wall=d.last_seen_wall)
        self.eligible = sum(d.eligible for d in self._devices.values())
