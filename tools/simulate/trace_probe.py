"""A probe that replays a device profile's fact trace on the simulation's clock."""

from __future__ import annotations

from fedge.edge_runtime.eligibility import DeviceFacts

from .fact_trace import FactTrace, facts_at


class TraceProbe:
    """Facts from a FactTrace at (clock.now() - start) seconds; start defaults to now."""

    def __init__(self, trace: FactTrace, clock, start: float | None = None):
        self.trace = trace
        self.clock = clock
        self.start = clock.now() if start is None else start

    def elapsed(self) -> float:
        return self.clock.now() - self.start

    def read(self) -> DeviceFacts:
        return facts_at(self.trace, self.elapsed())
