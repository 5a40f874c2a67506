"""May this device train now? A policy (config) judged against a snapshot of facts, without I/O.

Probes (probes.py) read the facts; EligibilityMonitor (eligibility_monitor.py) asks this
module before a task and between training steps. Everything here is a pure function of
(policy, facts, phase), so tests and simulated fleets feed it hand-made facts.

Reasons are stable strings that travel in Decline.reason and CheckIn.reason, and are
checked in this order (the first failing one is the verdict):

    battery_low        battery below min_battery_percent (charging or not, see below)
    not_charging       require_charging and the battery is not on external power
    no_link            no network link at all
    metered_link       a metered link (or cellular, metered unless told otherwise) when
                       allow_metered is false, or cellular not in allowed_links
    link_not_allowed   wifi or ethernet missing from allowed_links
    too_hot            hottest thermal zone above max_temperature_c
    cpu_busy           CPU idle below min_cpu_idle_percent ("before" only)
    low_memory         available memory below min_free_memory_mb
    outside_window     local time outside the policy's window

Unknown facts (None, link "unknown") do not block, with two exceptions where passing would
quietly defeat an explicit opt-in: require_charging with a battery whose charging state is
unknown, and a window when the local time is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .kernel.configfile import load_config
from .kernel.errors import ConfigError

LINKS = ("wifi", "ethernet", "cellular", "none", "unknown")
USABLE_LINKS = ("wifi", "ethernet", "cellular")  # what allowed_links may name
PHASES = ("before", "during")
REASONS = (
    "battery_low",
    "not_charging",
    "no_link",
    "metered_link",
    "link_not_allowed",
    "too_hot",
    "cpu_busy",
    "low_memory",
    "outside_window",
)
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class DeviceFacts:
    """One snapshot of what the device is like now. None means "not known here"."""

    battery_percent: float | None = None  # 0..100; None = no battery (mains powered)
    charging: bool | None = None  # on external power (charging or full); None = unknown
    link: str = "unknown"  # one of LINKS: the link that carries traffic to the broker
    metered: bool | None = None  # the OS marks the link metered; None = it does not say
    temperature_c: float | None = None  # hottest thermal zone
    cpu_idle_percent: float | None = None  # 0..100, since the previous reading
    free_memory_mb: float | None = None  # available memory (MiB)
    local_time_minutes: int | None = None  # minutes since local midnight, 0..1439

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"link {self.link!r}: use one of {', '.join(LINKS)}")


@dataclass(frozen=True)
class EligibilityPolicy:
    """When a device may train. TOML: an [eligibility] table (see load_policy)."""

    min_battery_percent: float = 50.0
    require_charging: bool = False  # if true, a battery device must be on external power
    allow_metered: bool = False
    allowed_links: tuple[str, ...] = ("wifi", "ethernet")
    max_temperature_c: float = 70.0
    # 20%: the rule keeps training off a CPU that other work already saturates, not off one
    # that is merely in use. A board or laptop that also runs its own services sits well below
    # 50% idle much of the day (that default declined every device on a busy laptop), yet at
    # 20% idle a 4-core Pi still has most of a core spare. Raise it on a device whose owner's
    # work must never share the CPU; 0 turns the rule off.
    min_cpu_idle_percent: float = 20.0
    min_free_memory_mb: float = 200.0
    window: str | None = None  # local time "HH:MM-HH:MM"; may wrap midnight ("22:00-06:00")

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_links", tuple(self.allowed_links))
        _check_range("min_battery_percent", self.min_battery_percent, 0.0, 100.0)
        _check_range("min_cpu_idle_percent", self.min_cpu_idle_percent, 0.0, 100.0)
        _check_range("max_temperature_c", self.max_temperature_c, -40.0, 150.0)
        _check_range("min_free_memory_mb", self.min_free_memory_mb, 0.0, math.inf)
        if not self.allowed_links:
            raise ConfigError(f"eligibility.allowed_links is empty: name at least one of {', '.join(USABLE_LINKS)}")
        bad = [link for link in self.allowed_links if link not in USABLE_LINKS]
        if bad:
            raise ConfigError(f"eligibility.allowed_links: unknown link(s) {bad}; use {', '.join(USABLE_LINKS)}")
        if self.window is not None:
            parse_window(self.window)

    @property
    def window_minutes(self) -> tuple[int, int] | None:
        return None if self.window is None else parse_window(self.window)


def load_policy(path: str | Path) -> EligibilityPolicy:
    """The [eligibility] table of a TOML file; a missing table gives the defaults."""
    return load_config(EligibilityPolicy, path, section="eligibility")


def parse_window(text: str) -> tuple[int, int]:
    """"HH:MM-HH:MM" -> (start, end) in minutes since midnight; end < start wraps midnight."""
    try:
        start, end = (parse_hhmm(part) for part in text.split("-"))
    except ValueError:
        raise ConfigError(f"eligibility.window {text!r}: use local time \"HH:MM-HH:MM\", e.g. "
                          "\"01:00-06:00\"") from None
    if start == end:
        raise ConfigError(f"eligibility.window {text!r} is empty; leave window out to allow all day")
    return start, end


def in_window(window: tuple[int, int], minutes: int) -> bool:
    start, end = window
    if start < end:
        return start <= minutes < end
    return minutes >= start or minutes < end  # wraps midnight


def failing(policy: EligibilityPolicy, facts: DeviceFacts, phase: str) -> tuple[str, ...]:
    """Every reason the device may not train now, in REASONS order."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r}: use 'before' or 'during'")
    reasons = []
    battery = facts.battery_percent
    if battery is not None:
        # A device on a weak charger can still drain under training load, so a low battery
        # blocks even while charging.
        if battery < policy.min_battery_percent:
            reasons.append("battery_low")
        if policy.require_charging and facts.charging is not True:
            reasons.append("not_charging")
    elif policy.require_charging and facts.charging is False:
        # A battery of unknown level that says it discharges: no battery would say nothing.
        reasons.append("not_charging")
    link_reason = _link_reason(policy, facts)
    if link_reason:
        reasons.append(link_reason)
    if facts.temperature_c is not None and facts.temperature_c > policy.max_temperature_c:
        reasons.append("too_hot")
    # Training itself keeps the CPU busy, so idle CPU is a precondition only: checked
    # during training it would abort every task it let start.
    idle = facts.cpu_idle_percent
    if phase == "before" and idle is not None and idle < policy.min_cpu_idle_percent:
        reasons.append("cpu_busy")
    if facts.free_memory_mb is not None and facts.free_memory_mb < policy.min_free_memory_mb:
        reasons.append("low_memory")
    window = policy.window_minutes
    if window is not None and (facts.local_time_minutes is None or not in_window(window, facts.local_time_minutes)):
        reasons.append("outside_window")
    return tuple(reasons)


def evaluate(policy: EligibilityPolicy, facts: DeviceFacts, phase: str) -> str | None:
    """The first failing reason, or None when the device may train.

    phase: "before" a task starts, or "during" training (between steps).
    """
    reasons = failing(policy, facts, phase)
    return reasons[0] if reasons else None


def explain(policy: EligibilityPolicy, facts: DeviceFacts, reason: str) -> str:
    """The reason with the numbers behind it, for people: "cpu_busy (idle 2% < 50%)"."""
    window = policy.window or ""
    local = facts.local_time_minutes
    detail = {
        "battery_low": f"battery {_num(facts.battery_percent)}% < {policy.min_battery_percent:g}%",
        "not_charging": "require_charging is set and the battery is not on external power",
        "no_link": "no network link",
        "metered_link": f"link {facts.link} is metered and allow_metered is false",
        "link_not_allowed": f"link {facts.link} not in allowed_links {list(policy.allowed_links)}",
        "too_hot": f"{_num(facts.temperature_c)} C > {policy.max_temperature_c:g} C",
        "cpu_busy": f"idle {_num(facts.cpu_idle_percent)}% < {policy.min_cpu_idle_percent:g}%",
        "low_memory": f"free {_num(facts.free_memory_mb)} MiB < {policy.min_free_memory_mb:g} MiB",
        "outside_window": f"local time {'unknown' if local is None else f'{local // 60:02d}:{local % 60:02d}'}"
                          f" outside {window}",
    }.get(reason)
    return f"{reason} ({detail})" if detail else reason


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _link_reason(policy: EligibilityPolicy, facts: DeviceFacts) -> str | None:
    link = facts.link
    if link == "none":
        return "no_link"
    # Cellular is metered unless the OS says otherwise (NetworkManager can mark it unmetered).
    metered = facts.metered if facts.metered is not None else link == "cellular"
    if metered and not policy.allow_metered:
        return "metered_link"
    if link == "unknown":
        return None  # the broker connection tells the truth soon enough
    if link not in policy.allowed_links:
        return "metered_link" if link == "cellular" else "link_not_allowed"
    return None


def parse_hhmm(text: str) -> int:
    """"HH:MM" -> minutes since midnight; ValueError when it is not a time of day."""
    hours, minutes = text.strip().split(":")
    if len(minutes) != 2 or not hours.isdigit() or not minutes.isdigit():
        raise ValueError(text)
    h, m = int(hours), int(minutes)
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise ValueError(text)
    return h * 60 + m


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        raise ConfigError(f"eligibility.{name} = {value!r}: must be a number in [{low:g}, {high:g}]")
