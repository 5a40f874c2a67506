"""When to stop asking: devices whose declines will not change by themselves, and rounds
that keep failing. Pure; no clock.

One device whose data does not fit the model declines every task with `bad_dataset`; with
nothing to stop it the coordinator picked it again at once, 321 abandoned rounds in 30 s. Two
rules end that:

* A device that declined for a reason that stays true until the device changes (its data,
  its backends) is parked: not selected again until it checks in with something new.
* Abandoned rounds in a row space out the next round's start exponentially:
  base_s * 2**(n - 1) after the n-th, capped at max_s; a committed round resets n.
"""

from __future__ import annotations

import hashlib

# Decline reasons (edge_runtime.kernel.errors .reason values) that retrying cannot cure: the
# device's data or its installed backends must change first. (Artifact faults are not here: a
# fetch or a coordinator with other artifacts cures them without the device changing.)
# bad_state too: a device whose own state file is damaged declines every task with it until a
# person moves the file aside, and reselecting it at once spun rounds as bad_dataset did. Parking
# it is safe because the device's check-ins say `bad_state` (not eligible) while the file cannot
# be read and stop saying so once it can (edge_runtime/state_health.py), so the fix, or the
# restart after it, is a check-in with something new that un-parks it.
PERMANENT_DECLINES = frozenset({"bad_dataset", "backend_unavailable", "unsupported_by_backend", "bad_state"})


def is_permanent(reason: str) -> bool:
    """True for a decline that will repeat until the device checks in with something new."""
    return reason in PERMANENT_DECLINES


def abandoned_delay(consecutive: int, base_s: float, max_s: float) -> float:
    """Seconds to wait before the next round after `consecutive` abandoned rounds in a row."""
    if consecutive <= 0 or base_s <= 0:
        return 0.0
    return min(max_s, base_s * 2.0 ** min(consecutive - 1, 60))  # min(): no float overflow


def fingerprint(checkin: object) -> str:
    """A short digest of a check-in's every field: what the registry keeps to compare the next
    one with (a check-in may be megabytes; its digest is 32 characters)."""
    return hashlib.blake2b(repr(checkin).encode(), digest_size=16).hexdigest()


def parked_after(parked: str, last: str | None, checkin: str) -> str:
    """A parked device's reason after a check-in: kept when the check-in's fingerprint repeats
    the last one (nothing changed on the device), cleared when it says anything new."""
    return parked if parked and last == checkin else ""
