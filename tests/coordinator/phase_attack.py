"""Helpers for the state-machine attacks (test_phase_*.py): a device client fedge did not write
sends well-formed messages at the wrong time, and each must be refused by name, in the
rejection metric and in a log line, while the honest devices' round commits their plain mean."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from fedge.edge_runtime.kernel.codec import encode_message

LOGGER = "fedge.coordinator"


def exported(coordinator, reason: str) -> float:
    """The rejection counter /metrics exports for `reason`."""
    return coordinator.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": reason}) or 0.0


def judged(fleet, caplog, device, message, channel: str = "update") -> Counter:
    """Send one message (a dataclass or a frame) from `device`, deliver everything; the rejections
    it caused. Each is exported by reason and named in a coordinator log line."""
    c = fleet.coordinator
    before, logged = Counter(c.rejections), len(caplog.records)
    metric_before = {r: exported(c, r) for r in set(c.rejections)}
    device.send(message if isinstance(message, bytes) else encode_message(message), channel=channel)
    fleet.drain()
    got = Counter(c.rejections) - before
    for reason, n in got.items():
        assert exported(c, reason) - metric_before.get(reason, 0.0) == n, reason
        lines = [r.getMessage() for r in caplog.records[logged:] if r.name.startswith(LOGGER)]
        assert any(f"rejected message from {device.id}: {reason} " in line for line in lines), (reason, lines)
    return got


def refused(fleet, caplog, device, message, reason: str, channel: str = "update") -> None:
    """`message` is refused once, as `reason`, and nothing else happens."""
    got = judged(fleet, caplog, device, message, channel)
    assert got == Counter({reason: 1}), (type(message).__name__, dict(got))


def plain_mean(old: dict, deltas: list[dict]) -> dict:
    """The oracle: old + the plain mean of the deltas, in float64, from the arrays the test made."""
    return {n: old[n].astype(np.float64) + np.mean([d[n].astype(np.float64) for d in deltas], axis=0) for n in old}


def capture(caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
