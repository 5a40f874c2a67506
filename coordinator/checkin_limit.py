"""How often one device may check in: a token bucket per device. Pure; the caller passes the clock.

An honest device checks in when it starts, when its link comes back, when a coordinator
(re)starts and when its Pace delay runs out: a few times a minute at most. Each check-in costs
the coordinator a decode, a Pace reply and, when its fields changed, a store write (about
0.35 ms with SQLite, where a repeat costs 0.07 ms). A device that flips its eligibility in a
loop could keep the coordinator busy writing and replying to it. The transport's fair queue
(edge_runtime/kernel/transport/fair_queue.py) already keeps such a device from starving the
others; this keeps it from costing anything past its share: a check-in over the budget is
refused by name (`checkin_too_often`), with no store write and no reply.

`burst` check-ins pass at once; one more is allowed every `refill_s` seconds. A device whose
bucket is full again is forgotten, so the table holds only devices that checked in lately."""

from __future__ import annotations

from .errors import CheckInTooOften


class CheckInLimit:
    def __init__(self, burst: int, refill_s: float):
        """refill_s = 0: no limit."""
        if burst < 1 or not refill_s >= 0:
            raise ValueError(f"need burst >= 1 and refill_s >= 0, got {burst}, {refill_s}")
        self.burst = burst
        self.refill_s = refill_s
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, when counted)
        self._prune_at = 1024

    def refusal(self, device_id: str, now: float) -> CheckInTooOften | None:
        """Take one check-in from the device's budget; the error when it is over it (nothing taken)."""
        if self.refill_s == 0:
            return None
        tokens = self._tokens(device_id, now)
        if tokens < 1.0:
            return CheckInTooOften(f"more than {self.burst} at once or one per {self.refill_s:g} s")
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) >= self._prune_at:
            self._prune(now)
        return None

    def _tokens(self, device_id: str, now: float) -> float:
        held = self._buckets.get(device_id)
        if held is None:
            return float(self.burst)
        tokens, since = held
        return min(float(self.burst), tokens + max(0.0, now - since) / self.refill_s)

    def _prune(self, now: float) -> None:
        """Forget devices whose bucket refilled (the same as never seen), so the table stays the
        size of the devices that checked in within burst * refill_s, not of every id ever seen."""
        self._buckets = {d: b for d, b in self._buckets.items() if self._tokens(d, now) < self.burst}
        self._prune_at = max(1024, 2 * len(self._buckets))
