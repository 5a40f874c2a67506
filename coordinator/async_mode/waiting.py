"""Why an open buffer cannot fill now: the line the coordinator logs once per buffer. Pure.

A buffer has no deadline (FedBuff steps every K accepted updates, however long they take),
so a half-full one waits until enough devices can give again. It cannot fill while no
device is training and no eligible device may be asked: none is eligible (every device
went offline, or is parked or not eligible), each gave its share of this buffer
(server._per_device_limit), or let its last task expire and has not been heard from since
(it gets no new task until it checks in or sends anything). Resting after a decline is not
among them: a rest ends by itself.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def why_waiting(buffer_id: int, buffered: int, k: int, eligible: Collection[str], in_flight: Collection[str],
                given: Mapping[str, int], limit: int, silent: Collection[str], registered: int,
                private: bool) -> str | None:
    """The line, or None while the buffer can still fill: it is full, a device is training,
    or an eligible device may still be asked (under its share and not silent)."""
    if buffered >= k or any(d in in_flight or (given.get(d, 0) < limit and d not in silent) for d in eligible):
        return None
    head = f"buffer {buffer_id} waits with {buffered} of K = {k} updates"
    if not eligible:
        return f"{head}: no device is eligible ({registered} registered; offline, parked or not eligible)"
    quiet = sum(1 for d in eligible if d in silent and given.get(d, 0) < limit)
    gave = len(eligible) - quiet
    parts = []
    if gave:
        parts.append(f"the {_devices(gave)} gave {limit} each, the most one device may give one buffer"
                     + (" under central DP: more devices, or a smaller buffer_size" if private else ""))
    if quiet:
        parts.append(f"{_devices(quiet)} not heard from since {'its' if quiet == 1 else 'their'} last task expired")
    return f"{head}: " + "; ".join(parts)


def _devices(n: int) -> str:
    return f"{n} eligible device{'' if n == 1 else 's'}"
