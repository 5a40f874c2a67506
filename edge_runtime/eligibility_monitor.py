"""Eligibility as DeviceRuntime's two hooks: `before` a task and `during` training.

    monitor = EligibilityMonitor(SystemProbe(), load_policy("device.toml"))
    DeviceRuntime(..., eligibility=monitor.before, abort_check=monitor.during)

local_training calls `during` before every minibatch step, which can be thousands of times
a second on a small model. Reading the facts costs file reads (and now and then an nmcli
run), so `during` reads at most once per check_interval_s and judges the cached facts in
between. A device therefore aborts at most about check_interval_s plus one training step
after a fact turns bad.
"""

from __future__ import annotations

import logging
import threading

from .eligibility import DeviceFacts, EligibilityPolicy, evaluate
from .kernel.clock import SystemClock
from .probes import FactSource

log = logging.getLogger("fedge.eligibility")


class EligibilityMonitor:
    def __init__(self, source: FactSource, policy: EligibilityPolicy, clock=None, check_interval_s: float = 0.5,
                 name: str = "device"):
        if check_interval_s < 0:
            raise ValueError(f"check_interval_s must be >= 0, got {check_interval_s}")
        self.source = source
        self.policy = policy
        self.clock = clock or SystemClock()
        self.check_interval_s = check_interval_s
        self.name = name  # for log lines
        self.facts: DeviceFacts | None = None  # the latest reading
        self.read_at: float | None = None  # clock seconds of that reading
        self._verdicts: dict[str, str | None] = {}  # phase -> last verdict, for logging changes
        self._judged: dict[str, DeviceFacts] = {}  # phase -> the facts its last verdict was made on
        self._lock = threading.Lock()  # check-in and training may ask from different threads

    def before(self) -> str | None:
        """Before a task: always a fresh reading. A reason, or None when eligible."""
        with self._lock:
            self._read()
            return self._judge("before")

    def during(self) -> str | None:
        """Between training steps: a fresh reading at most every check_interval_s."""
        with self._lock:
            if self.read_at is None or self.clock.now() - self.read_at >= self.check_interval_s:
                self._read()
            if self._judged.get("during") is self.facts:
                return self._verdicts["during"]  # same reading as the last step: same verdict
            return self._judge("during")

    def _read(self) -> None:
        self.facts = self.source.read()
        self.read_at = self.clock.now()

    def _judge(self, phase: str) -> str | None:
        assert self.facts is not None
        verdict = evaluate(self.policy, self.facts, phase)
        if phase not in self._verdicts or self._verdicts[phase] != verdict:
            level = logging.INFO if phase in self._verdicts or verdict else logging.DEBUG
            log.log(level, "%s eligibility (%s): %s -> %s; %s", self.name, phase,
                    _word(self._verdicts.get(phase, "?")), _word(verdict), _summary(self.facts))
            self._verdicts[phase] = verdict
        self._judged[phase] = self.facts
        return verdict


def _word(verdict: str | None) -> str:
    return "eligible" if verdict is None else verdict


def _summary(facts: DeviceFacts) -> str:
    parts = []
    if facts.battery_percent is not None:
        parts.append(f"battery {facts.battery_percent:.1f}%" + (" charging" if facts.charging else ""))
    parts.append(f"link {facts.link}" + (" metered" if facts.metered else ""))
    if facts.temperature_c is not None:
        parts.append(f"{facts.temperature_c:.0f} C")
    if facts.cpu_idle_percent is not None:
        parts.append(f"cpu idle {facts.cpu_idle_percent:.0f}%")
    if facts.free_memory_mb is not None:
        parts.append(f"{facts.free_memory_mb:.0f} MiB free")
    return ", ".join(parts)
