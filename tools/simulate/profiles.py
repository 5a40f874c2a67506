"""Device profiles for simulated fleets: how fast a kind of device trains, how often it
vanishes, and how its battery, link and temperature change over time.

A profile is a TOML file; the shipped ones live in hardware/profiles/<name>.toml:

    name = "pi4-ups"
    description = "..."
    compute_speed = 3.0          # step-time multiplier vs the reference machine (2.0 = half as fast)
    dropout_probability = 0.02   # chance per task that the device goes silent (no reply at all)

    [trace]                      # edge_runtime.fact_trace.FactTrace
    battery_start_percent = 85
    drain_percent_per_min = 0.4
    ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fedge.edge_runtime.kernel.configfile import from_dict, load_toml
from fedge.edge_runtime.kernel.errors import ConfigError

from .fact_trace import FactTrace
from .trace_probe import TraceProbe


@dataclass(frozen=True)
class DeviceProfile:
    name: str = "reference"
    description: str = ""
    compute_speed: float = 1.0  # multiplies step time; 1.0 = the machine the simulator runs on
    dropout_probability: float = 0.0  # per task, in [0, 1)
    trace: FactTrace = field(default_factory=FactTrace)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.compute_speed) and self.compute_speed > 0):
            raise ConfigError(f"compute_speed = {self.compute_speed}: must be > 0 (profile {self.name})")
        if not 0 <= self.dropout_probability < 1:
            raise ConfigError(f"dropout_probability = {self.dropout_probability}: must be in [0, 1) (profile "
                              f"{self.name})")

    def trace_probe(self, clock, start: float | None = None) -> TraceProbe:
        """A FactSource replaying this profile's trace on `clock`, from `start` (default: now)."""
        return TraceProbe(self.trace, clock, start)


def available_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped in hardware/profiles/."""
    return tuple(sorted(p.name[: -len(".toml")] for p in _profile_dir().iterdir() if p.name.endswith(".toml")))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name ("pi4-ups") or any profile file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        path = Path(text)
    else:
        path = Path(str(_profile_dir().joinpath(f"{text}.toml")))
        if not path.is_file():
            raise ConfigError(f"no device profile named {text!r}; shipped: {', '.join(available_profiles())}")
    data = load_toml(path)
    data.setdefault("name", path.stem)
    return from_dict(DeviceProfile, data, where=path.name)


def _profile_dir():
    # hardware/ is package data ("hardware/**/*" in pyproject), so this works installed too.
    return resources.files("fedge.hardware").joinpath("profiles")
