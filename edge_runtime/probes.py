"""Where device facts come from: the real machine, a test's hand, or a simulated trace.

    FactSource     anything with read() -> DeviceFacts
    ├── SystemProbe   sysfs/procfs under a root, psutil, NetworkManager (nmcli)
    └── FakeProbe     facts a test or simulation sets by hand
    (TraceProbe, which replays a device profile's trace, lives with the simulator: tools/simulate/trace_probe.py)

describe() reports each fact with the source it came from, for `fedge device probe`.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

from .eligibility import DeviceFacts, EligibilityPolicy, evaluate, explain, failing
from .kernel.clock import SystemClock
from .sysfs_facts import IGNORED_THERMAL_TYPES, read_link, read_power, read_temperature

Runner = Callable[[Sequence[str]], "str | None"]  # argv -> stdout; None if missing or failed


class FactSource(Protocol):
    def read(self) -> DeviceFacts:
        """A fresh snapshot. May cost a few file reads or a subprocess: callers rate-limit."""
        ...


def run_command(argv: Sequence[str], timeout_s: float = 2.0) -> str | None:
    """Run a command and return its stdout; None when it is not installed, fails or hangs."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


class SystemProbe:
    """The real facts of this machine.

    root: where sysfs and procfs are read ("/" on a device; a fixture tree in tests).
    run: runs `nmcli` to ask NetworkManager whether the link is metered.
    metered_ttl_s: the metered flag rarely changes, so nmcli runs at most this often per
        interface (a subprocess costs tens of milliseconds of CPU on a Pi).
    metered_wait_s: nmcli runs in a background thread, and a reading uses the last answer
        (stale by at most about metered_ttl_s): a check between training steps must never
        wait for a subprocess with a 2 s timeout, or an abort could come later than 2 s. Only
        when there is no answer yet for the interface does a reading wait, this long at most;
        after that it says "unknown" (None) until nmcli answers.
    Battery falls back to psutil only when root is "/" and there is no sysfs power_supply
    class (macOS, Windows, BSD); on Linux psutil reads the same files knowing less.
    """

    def __init__(
        self,
        root: str | Path = "/",
        run: Runner = run_command,
        clock=None,
        metered_ttl_s: float = 30.0,
        ignored_thermal_types: tuple[str, ...] = IGNORED_THERMAL_TYPES,
        metered_wait_s: float = 0.2,
    ):
        self.root = Path(root)
        self.run = run
        self.clock = clock or SystemClock()
        self.metered_ttl_s = metered_ttl_s
        self.ignored_thermal_types = ignored_thermal_types
        self._is_real_root = self.root.resolve() == Path("/")
        self.metered_wait_s = metered_wait_s
        self._metered_cache: dict[str, tuple[float, bool | None]] = {}  # interface -> (asked at, flag)
        self._asking: dict[str, threading.Thread] = {}  # interface -> its nmcli run in flight
        self._metered_lock = threading.Lock()
        self._cpu = _CpuIdle()

    def read(self) -> DeviceFacts:
        return self.read_with_sources()[0]

    def read_with_sources(self) -> tuple[DeviceFacts, dict[str, str]]:
        sources: dict[str, str] = {}
        battery, charging = self._power(sources)
        link = read_link(self.root)
        sources["link"] = link.source
        metered = self._metered(link.interface, sources) if link.link not in ("none", "unknown") else None
        temperature, sources["temperature_c"] = read_temperature(self.root, self.ignored_thermal_types)
        cpu_idle = self._cpu.read()
        sources["cpu_idle_percent"] = "psutil.cpu_times" if cpu_idle is not None else "psutil.cpu_times (first reading)"
        free_mb = psutil.virtual_memory().available / 2**20
        sources["free_memory_mb"] = "psutil.virtual_memory().available"
        local = time.localtime(self.clock.wall())
        sources["local_time_minutes"] = "clock.wall() in the local time zone"
        facts = DeviceFacts(
            battery_percent=battery,
            charging=charging,
            link=link.link,
            metered=metered,
            temperature_c=temperature,
            cpu_idle_percent=cpu_idle,
            free_memory_mb=free_mb,
            local_time_minutes=local.tm_hour * 60 + local.tm_min,
        )
        return facts, sources

    def _power(self, sources: dict[str, str]) -> tuple[float | None, bool | None]:
        power = read_power(self.root)
        if power is None and self._is_real_root:
            sensors = getattr(psutil, "sensors_battery", None)
            battery = sensors() if sensors else None
            source = "psutil.sensors_battery()" if battery else "psutil.sensors_battery() (none: mains)"
            sources["battery_percent"] = sources["charging"] = source
            return (float(battery.percent), battery.power_plugged) if battery else (None, None)
        if power is None:
            sources["battery_percent"] = sources["charging"] = "no power_supply class (taken as mains)"
            return None, None
        sources["battery_percent"] = sources["charging"] = power.source
        return power.battery_percent, power.charging

    def _metered(self, interface: str | None, sources: dict[str, str]) -> bool | None:
        if interface is None:
            sources["metered"] = "no interface to ask about"
            return None
        now = self.clock.now()
        with self._metered_lock:
            cached = self._metered_cache.get(interface)
            asking = self._asking.get(interface)
            if asking is None and (cached is None or now - cached[0] >= self.metered_ttl_s):
                asking = threading.Thread(target=self._ask_nmcli, args=(interface, now), daemon=True,
                                          name=f"nmcli-{interface}")
                self._asking[interface] = asking
                asking.start()
        if cached is None and asking is not None:
            asking.join(self.metered_wait_s)  # nothing known yet: a short wait, never nmcli's whole timeout
            with self._metered_lock:
                cached = self._metered_cache.get(interface)
        if cached is None:
            sources["metered"] = f"nmcli still running for {interface} (unknown until it answers)"
            return None
        known = cached[1] is not None
        sources["metered"] = f"nmcli GENERAL.METERED of {interface}" if known else "nmcli unavailable or unsure"
        return cached[1]

    def _ask_nmcli(self, interface: str, asked_at: float) -> None:
        try:
            flag = parse_nmcli_metered(self.run(["nmcli", "-t", "-f", "GENERAL.METERED", "dev", "show", interface]))
        except Exception:  # a runner that fails is an nmcli that does not answer
            flag = None
        with self._metered_lock:
            self._metered_cache[interface] = (asked_at, flag)
            self._asking.pop(interface, None)

    def settle(self, timeout_s: float = 5.0) -> None:
        """Wait for nmcli runs in flight (for `fedge device probe` and tests)."""
        with self._metered_lock:
            running = list(self._asking.values())
        for thread in running:
            thread.join(timeout_s)


def parse_nmcli_metered(output: str | None) -> bool | None:
    """`nmcli -t -f GENERAL.METERED dev show IF` prints "GENERAL.METERED:yes (guessed)",
    "...:no", or "...:unknown"; guessed values count (NM guesses cellular as metered)."""
    for line in (output or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "GENERAL.METERED":
            value = value.strip().lower()
            if value.startswith("yes"):
                return True
            if value.startswith("no"):
                return False
    return None


class _CpuIdle:
    """Idle CPU percent since the previous reading, without sleeping.

    psutil.cpu_percent(interval=None) does the same but keeps one baseline for the whole
    process, so any other caller would shorten our interval; this keeps its own.
    """

    MIN_SPAN_S = 0.1  # CPU-seconds (summed over cores); /proc/stat ticks are 10 ms

    def __init__(self) -> None:
        self._last = psutil.cpu_times()
        self._value: float | None = None

    def read(self) -> float | None:
        now = psutil.cpu_times()
        total = _busy_and_idle(now) - _busy_and_idle(self._last)
        if total < 0:  # counters went back (iowait may fall, proc(5); a core went offline): start again
            self._last = now
            return self._value
        if total < self.MIN_SPAN_S:
            return self._value  # too short a span to mean anything: the previous reading
        idle = _idle(now) - _idle(self._last)
        self._last = now
        self._value = min(100.0, max(0.0, 100.0 * idle / total))
        return self._value


def _idle(t) -> float:
    return t.idle + getattr(t, "iowait", 0.0)  # waiting on I/O leaves the CPU free, as psutil counts it


def _busy_and_idle(t) -> float:
    # Linux counts guest time inside user time already (psutil does the same subtraction).
    return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


HEALTHY = DeviceFacts(
    battery_percent=None,
    charging=None,
    link="ethernet",
    metered=False,
    temperature_c=45.0,
    cpu_idle_percent=90.0,
    free_memory_mb=1024.0,
    local_time_minutes=None,
)


class FakeProbe:
    """Facts set by hand; `set` may be called from another thread while a device trains."""

    def __init__(self, facts: DeviceFacts = HEALTHY, **changes: Any):
        self.facts = dataclasses.replace(facts, **changes)
        self.reads = 0
        self._lock = threading.Lock()

    def set(self, **changes: Any) -> None:
        with self._lock:
            self.facts = dataclasses.replace(self.facts, **changes)

    def read(self) -> DeviceFacts:
        with self._lock:
            self.reads += 1
            return self.facts


def describe(probe: FactSource | None = None, policy: EligibilityPolicy | None = None,
             settle_s: float = 0.25) -> dict[str, Any]:
    """Facts and where each came from; with a policy, the verdicts too. Plain JSON types.

    {"facts": {name: {"value": v, "source": s}},
     "verdict": {"eligible": bool, "before": r, "during": r, "failing": [...], "why": ["cpu_busy (idle 2% < 20%)"]}}

    CPU idle is a rate: a fresh probe has no span to measure yet, so a reading without one is
    retaken after settle_s seconds (a one-off command, unlike the monitor's reads, may wait).
    """
    if probe is None:
        probe = SystemProbe(metered_wait_s=3.0)  # one-off: wait for nmcli's answer (its timeout is 2 s)
    reader = getattr(probe, "read_with_sources", None)
    if reader is not None:
        facts, sources = reader()
        if facts.cpu_idle_percent is None and settle_s > 0:
            time.sleep(settle_s)
            facts, sources = reader()
    else:
        facts, sources = probe.read(), {}
    kind = type(probe).__name__
    out: dict[str, Any] = {
        "facts": {f.name: {"value": getattr(facts, f.name), "source": sources.get(f.name, kind)}
                  for f in dataclasses.fields(facts)},
    }
    if policy is not None:
        reasons = failing(policy, facts, "before")
        out["verdict"] = {
            "eligible": not reasons,
            "before": evaluate(policy, facts, "before"),
            "during": evaluate(policy, facts, "during"),
            "failing": list(reasons),
            "why": [explain(policy, facts, r) for r in reasons],
        }
    return out


def render(description: dict[str, Any]) -> str:
    """describe()'s dict for people: the verdict first, then one fact per line."""
    lines = []
    verdict = description.get("verdict")
    if verdict is not None:
        lines.append("eligible: yes" if verdict["eligible"] else f"eligible: no: {'; '.join(verdict['why'])}")
        if verdict["eligible"] != (verdict["during"] is None):
            lines.append("during training: "
                         f"{'ok' if verdict['during'] is None else 'would abort: ' + verdict['during']}")
    width = max(len(name) for name in description["facts"])
    for name, fact in description["facts"].items():
        value = fact["value"]
        shown = "unknown" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<{width}}  {shown:<10}  {fact['source']}")
    return "\n".join(lines)
