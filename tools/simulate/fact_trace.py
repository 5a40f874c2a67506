"""Device facts as a pure function of elapsed time, for simulated fleets and tests.

A FactTrace is the [trace] table of a device profile (hardware/profiles/*.toml). Times are
seconds since the trace started; rates are percent per minute. Windows are [start, end)
pairs and repeat every period_s when it is set (e.g. 86400 for a daily plug-in pattern).

    battery   starts at battery_start_percent, drains while off external power, charges
              inside charging_s windows, clamped to [0, 100]; no battery = mains powered
    link      `link`, except "none" inside offline_s windows
    heat      temperature_c, except hot_temperature_c inside hot_s windows
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.edge_runtime.eligibility import LINKS, MINUTES_PER_DAY, DeviceFacts, parse_hhmm
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.wire_fields import bounded

Windows = tuple[tuple[float, float], ...]  # [start, end) seconds


@dataclass(frozen=True)
class FactTrace:
    battery_start_percent: float | None = None  # None = no battery, mains powered
    drain_percent_per_min: float = 0.0  # while off external power
    charge_percent_per_min: float = 0.0  # inside charging windows
    charging_s: Windows = ()  # on external power
    offline_s: Windows = ()  # link is "none"
    hot_s: Windows = ()
    period_s: float = 0.0  # windows repeat with this period; 0 = they happen once
    link: str = "wifi"
    metered: bool | None = None
    temperature_c: float | None = 45.0
    hot_temperature_c: float = 80.0
    cpu_idle_percent: float | None = bounded(0.0, 100.0, 90.0)
    free_memory_mb: float | None = bounded(0.0, 1e12, 1024.0)  # a terabyte of RAM, in MB
    start_local_time: str | None = None  # "HH:MM" at trace time 0; None = local time unknown

    def __post_init__(self) -> None:
        for name in ("charging_s", "offline_s", "hot_s"):
            windows = tuple(tuple(float(x) for x in w) for w in getattr(self, name))
            object.__setattr__(self, name, windows)
            for start, end in windows:
                if not 0 <= start < end:
                    raise ConfigError(f"trace.{name}: window [{start:g}, {end:g}] must have 0 <= start < end")
                if self.period_s and end > self.period_s:
                    raise ConfigError(f"trace.{name}: window [{start:g}, {end:g}] ends after "
                                      f"period_s={self.period_s:g}")
        if self.battery_start_percent is not None and not 0 <= self.battery_start_percent <= 100:
            raise ConfigError(f"trace.battery_start_percent = {self.battery_start_percent}: must be in [0, 100]")
        for name in ("drain_percent_per_min", "charge_percent_per_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trace.{name} must be >= 0")
        if self.period_s < 0 or not math.isfinite(self.period_s):
            raise ConfigError(f"trace.period_s = {self.period_s}: must be >= 0 (0 = no repeat)")
        if self.link not in LINKS:
            raise ConfigError(f"trace.link {self.link!r}: use one of {', '.join(LINKS)}")
        if self.start_local_time is not None:
            try:
                parse_hhmm(self.start_local_time)
            except ValueError:
                raise ConfigError(f"trace.start_local_time {self.start_local_time!r}: use \"HH:MM\"") from None


def facts_at(trace: FactTrace, t: float) -> DeviceFacts:
    """The facts `t` seconds after the trace started (t < 0 counts as 0)."""
    t = max(0.0, t)
    mains = trace.battery_start_percent is None
    on_power = mains or _inside(trace.charging_s, trace.period_s, t)
    local = None
    if trace.start_local_time is not None:
        local = int(parse_hhmm(trace.start_local_time) + t // 60) % MINUTES_PER_DAY
    return DeviceFacts(
        battery_percent=None if mains else battery_at(trace, t),
        charging=on_power,
        link="none" if _inside(trace.offline_s, trace.period_s, t) else trace.link,
        metered=trace.metered,
        temperature_c=trace.hot_temperature_c if _inside(trace.hot_s, trace.period_s, t) else trace.temperature_c,
        cpu_idle_percent=trace.cpu_idle_percent,
        free_memory_mb=trace.free_memory_mb,
        local_time_minutes=local,
    )


def battery_at(trace: FactTrace, t: float) -> float | None:
    """Battery percent at time t: drain and charge integrated piecewise, clamped at 0 and 100
    (so the level depends on the path, not just on net time charging)."""
    if trace.battery_start_percent is None:
        return None
    level, now = trace.battery_start_percent, 0.0
    for start, end in _occurrences(trace.charging_s, trace.period_s, t):
        level = _clamp(level - trace.drain_percent_per_min * (start - now) / 60.0)
        level = _clamp(level + trace.charge_percent_per_min * (end - start) / 60.0)
        now = end
    return _clamp(level - trace.drain_percent_per_min * (t - now) / 60.0)


def _occurrences(windows: Windows, period: float, until: float) -> list[tuple[float, float]]:
    """Absolute, merged, sorted windows clipped to [0, until)."""
    spans = []
    repeats = int(until // period) + 1 if period else 1
    for k in range(repeats):
        base = k * period
        for start, end in windows:
            if base + start < until:
                spans.append((base + start, min(base + end, until)))
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _inside(windows: Windows, period: float, t: float) -> bool:
    phase = t % period if period else t
    return any(start <= phase < end for start, end in windows)


def _clamp(level: float) -> float:
    return min(100.0, max(0.0, level))
