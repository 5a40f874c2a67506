"""The devices the coordinator knows: a read-only mapping device_id -> DeviceRecord, changed
only through `register`, `seen`, `park` and `restore`, so the eligible count and the store follow.
A parked device (backoff.py) stays out of `eligible_devices` until it checks in with something new.

The store's row of a device is written at once when anything but its last-seen time changed. Its
last_seen_wall is also refreshed while it checks in unchanged: a device checking in with the same
facts for weeks kept the wall time of its first check-in, and `fedge coordinator forget-devices`
(forget_devices.py), which reads that column, would have taken it for a device unseen all that
time. A refresh-only write is not made on the check-in's path, one durable transaction each (2.2-2.9 ms
here: after an upgrade or a long stop every row is old, and 20,000 devices wrote 20,000 rows in the
first minute and stayed in phase, ~10,000 again six hours later; a million devices would block the
loop ~37 min per wave). It is queued, and `flush_refreshes` writes the queue in ONE transaction at
most every REFRESH_FLUSH_S, at most REFRESH_BATCH_MAX rows each (9-15 us a row measured here, so
~0.5 s per full batch, ~40 ms a minute for a million devices once spread; 50,000 a minute keeps up
with MAX_REGISTRY's 10 million, ~37,000 a minute), from the service loop's every turn (loop.py),
never from `register`: a check-in does no store work for other devices, and a store error there
had skipped the rest of the check-in (its Pace, its resend) after its record was replaced.
PostgreSQL writes a batch in one statement (pg_store.py: 50,000 rows 1.2 s, not 8.5 s).
A failed flush puts its batch back in the queue, with the times it held, for the flush
REFRESH_FLUSH_S later; the loop logs and counts it (fedge_store_refresh_failures_total) and goes
on, except for the errors that stop the service anyway (loop.STOPS_THE_SERVICE).
Each device is refreshed every refresh_interval(id): LAST_SEEN_WRITE_S x (0.5 + 0.5 u), u in [0, 1)
a hash of its id, measured on the monotonic clock, so a fleet whose rows all went old at once
(an upgrade, a restart after a long stop) is written once in batches and then spreads over 3-6 h
instead of staying in phase; a wall-clock step moves nothing.

While the service runs, a device's latest check-in is less than its interval (< 6 h) after the
wall time its row or its queued refresh holds, and a queued refresh is written within the flushes
a whole registry queued at once needs: refresh_lag_s(max_devices) bounds both, and forget-devices
adds it to its N days (for the larger of max_devices and the rows it finds: a registry restored
over a lowered cap keeps every device). That bound holds while flushes succeed: while the store
refuses them, rows lag by as long again, and the failures are counted. A clean stop writes the
queue after the last round's Acks are flushed, for at most DRAIN_BUDGET_S (systemd's
TimeoutStopSec), and a deposed leader not at all (drain_refreshes, service.py). Crash safety:
a crash loses what was queued in its last minute, which only leaves those rows older than the
truth, never newer: up to the interval plus the device's pace behind its last check-in, until it
checks in with the service running again. A change of facts (eligible, reason, example count), a
new device and a last will still write at once, and drop any refresh queued for that device (the
write carries the newer time)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from types import MappingProxyType

from . import backoff
from .records import DeviceRecord
from .store import Store, StoredDevice

LAST_SEEN_WRITE_S = 6 * 3600.0  # the longest refresh interval of a device's stored last_seen_wall
REFRESH_FLUSH_S = 60.0  # queued refreshes are written at most this often
REFRESH_BATCH_MAX = 50_000  # and at most this many rows a flush (measured cost: module docstring)
# A clean stop writes the queue for at most this long: systemd kills a service TimeoutStopSec (30 s
# by default) after SIGTERM, and the last round's Acks are flushed first (service.py).
DRAIN_BUDGET_S = 10.0


def refresh_interval(device_id: str) -> float:
    """LAST_SEEN_WRITE_S x (0.5 + 0.5 u(id)): stable for a device, spread over the fleet."""
    digest = hashlib.blake2b(device_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return LAST_SEEN_WRITE_S * (0.5 + 0.5 * int.from_bytes(digest, "big") / 2.0**64)


def refresh_lag_s(max_devices: int) -> float:
    """How far a checking-in device's stored last_seen_wall may lag the truth: the longest interval,
    plus the flushes a registry of max_devices queued all at once needs, plus the one in progress."""
    return LAST_SEEN_WRITE_S + REFRESH_FLUSH_S * (math.ceil(max_devices / REFRESH_BATCH_MAX) + 1)


class Registry(Mapping[str, DeviceRecord]):
    def __init__(self, store: Store):
        self.store = store
        self._devices: dict[str, DeviceRecord] = {}
        self.eligible = 0  # devices whose last check-in said eligible
        self._refresh: dict[str, float] = {}  # device id -> the wall time its row waits to be refreshed to
        self._flushed_at = -math.inf  # clock seconds of the last flush

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
        is written at once when something other than last_seen changed, and a refresh of its
        last_seen_wall is queued when its refresh_interval passed (module docstring)."""
        old = self._devices.get(device_id)
        parked = old.parked if old else ""
        if checkin is not None:
            parked = backoff.parked_after(parked, old.checkin if old else None, checkin)
        else:
            checkin = old.checkin if old else None
        if old is None or (old.eligible, old.reason, old.num_examples) != (eligible, reason, num_examples):
            self.store.save_device(StoredDevice(device_id, wall, eligible, reason, num_examples))
            # after the write: it carries the newer time; a failed one leaves the queued refresh queued
            self._refresh.pop(device_id, None)
            refresh_at = now + refresh_interval(device_id)
        elif now >= old.refresh_at:
            self._refresh[device_id] = wall  # written by flush_refreshes, with the facts it holds then
            refresh_at = now + refresh_interval(device_id)
        else:
            refresh_at = old.refresh_at
        self._devices[device_id] = DeviceRecord(device_id, now, eligible, reason, num_examples, parked, checkin,
                                                refresh_at)
        self.eligible += int(eligible) - int(old is not None and old.eligible)

    @property
    def queued_refreshes(self) -> Mapping[str, float]:
        """device id -> the wall time its row waits to be refreshed to (read-only)."""
        return MappingProxyType(self._refresh)

    def drain_refreshes(self, clock: Callable[[], float], budget_s: float = DRAIN_BUDGET_S) -> int:
        """Write the queued refreshes at a clean stop, REFRESH_BATCH_MAX a transaction, while
        `clock` (seconds) says less than budget_s passed; the rows written. Each write is bounded
        by what is left of the budget (Store.write_deadline: the budget was only checked between
        writes, and one on a cut link to PostgreSQL hung for the kernel's ~15 minutes). What is
        left stays older in the store, which is safe (module docstring)."""
        written, until = 0, clock() + budget_s
        while self._refresh and (now := clock()) < until:
            with self.store.write_deadline(until - now):
                written += self.flush_refreshes(now, force=True)
        return written

    def flush_refreshes(self, now: float, force: bool = False) -> int:
        """Write up to REFRESH_BATCH_MAX queued refreshes in one transaction, when REFRESH_FLUSH_S
        passed since the last flush (or force); the number of rows written. A failed write puts
        the batch back in the queue, to be written by the flush REFRESH_FLUSH_S later, and raises
        as any store write (the loop says which errors it survives: loop.py)."""
        if not self._refresh or (not force and now - self._flushed_at < REFRESH_FLUSH_S):
            return 0
        self._flushed_at = now
        batch = [(d, self._refresh.pop(d)) for d in list(islice(self._refresh, REFRESH_BATCH_MAX))]
        # the queue is not empty (above), and the registry never drops a device it queued
        rows = [StoredDevice(d, wall, (r := self._devices[d]).eligible, r.reason, r.num_examples) for d, wall in batch]
        try:
            self.store.save_devices(rows)
        except BaseException:
            # Lost, these rows could lag past refresh_lag_s (their refresh_at moved on) and
            # forget-devices take a device seen within its N days for one unseen: queue them
            # again. Nothing ran since the pop, so no newer refresh or write of theirs exists.
            for device_id, wall in batch:
                self._refresh.setdefault(device_id, wall)
            raise
        return len(rows)

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
        """Load the stored devices; last_seen moves into this process's clock by its wall age, and
        a row's next refresh is due its interval after that. Records, once, when this build began
        refreshing the stored times (Store.refresh_began: forget-devices waits for it)."""
        self.store.refresh_began(wall)
        for d in self.store.load_devices():
            seen = now - max(0.0, wall - d.last_seen_wall)
            self._devices[d.device_id] = DeviceRecord(d.device_id, seen, d.eligible, d.reason, d.num_examples,
                                                      refresh_at=seen + refresh_interval(d.device_id))
        self.eligible = sum(d.eligible for d in self._devices.values())
