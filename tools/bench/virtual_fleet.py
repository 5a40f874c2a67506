"""A fleet on a virtual clock, for `fedge bench async`: how long each device takes a task,
and when it may take one. Pure: numpy and one seeded RNG; no device code runs here.

Per device, drawn once:

    compute    seconds per example per epoch = seconds_per_example x profile.compute_speed
               x LogNormal(0, speed_sigma), and x slow_factor (10) for a slow_fraction (10%)
               of devices: the tail that makes a synchronous round wait or drop work
    link       uplink and downlink rates, LogNormal around their medians (bytes per second)
    profile    one of the shipped hardware profiles (hardware/profiles), by `profile_mix`
    phase      a uniform offset into the profile's day (devices live in different time zones)

A task takes download + compute + upload seconds:
    bytes_down / down_rate + examples x epochs x seconds per example + bytes_up / up_rate.
A device is available at t when its profile's trace says it is on power (mains, or inside a
charging window), online (outside its offline windows) and not hot: the default eligibility
of a device that trains only on the charger. A task is lost (the device goes silent) with
the profile's dropout_probability, or when the device becomes unavailable before it ends
(checked every minute of the task and at its end; the profiles' windows last 10 minutes or more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.tools.simulate.profiles import load_profile

CHECK_S = 60.0  # a task is lost if its device is unavailable at any of these steps: windows last minutes


@dataclass(frozen=True)
class FleetModel:
    seconds_per_example: float = 0.5  # one epoch over one example on the reference device (virtual s)
    speed_sigma: float = 0.5  # log-normal spread of compute speed
    slow_fraction: float = 0.1  # share of devices in the slow tail
    slow_factor: float = 10.0  # how much slower the tail is
    up_bytes_per_s: float = 50e3  # median uplink (a weak cellular link)
    down_bytes_per_s: float = 500e3  # median downlink
    link_sigma: float = 1.0
    profile_mix: tuple[tuple[str, float], ...] = (("phone-like", 0.6), ("pi4-ups", 0.2), ("jetson-nano", 0.2))


def _inside(windows, period: float, t: float) -> bool:
    phase = t % period if period else t
    return any(start <= phase < end for start, end in windows)


class VirtualFleet:
    def __init__(self, examples: np.ndarray, model: FleetModel, rng: np.random.Generator):
        n = len(examples)
        self.examples = np.asarray(examples)
        names = [name for name, _ in model.profile_mix]
        weights = np.array([w for _, w in model.profile_mix], np.float64)
        self.profiles = [load_profile(name) for name in names]
        self.kind = rng.choice(len(names), size=n, p=weights / weights.sum())
        self.slow = rng.random(n) < model.slow_fraction
        speed = np.array([p.compute_speed for p in self.profiles])[self.kind]
        self.seconds_per_example = (model.seconds_per_example * speed * rng.lognormal(0.0, model.speed_sigma, n)
                                    * np.where(self.slow, model.slow_factor, 1.0))
        self.up_rate = model.up_bytes_per_s * rng.lognormal(0.0, model.link_sigma, n)
        self.down_rate = model.down_bytes_per_s * rng.lognormal(0.0, model.link_sigma, n)
        periods = np.array([p.trace.period_s or 86400.0 for p in self.profiles])[self.kind]
        self.phase = rng.uniform(0.0, periods)
        self.dropout = np.array([p.dropout_probability for p in self.profiles])[self.kind]

    def __len__(self) -> int:
        return len(self.examples)

    def times(self, device: int, epochs: int, bytes_down: int, bytes_up: int) -> tuple[float, float, float]:
        """(download, compute, upload) seconds of one task."""
        return (bytes_down / self.down_rate[device],
                float(self.examples[device] * epochs * self.seconds_per_example[device]),
                bytes_up / self.up_rate[device])

    def task_seconds(self, epochs: int, bytes_down: int, bytes_up: int) -> np.ndarray:
        """Every device's task time (seconds), for the deadline's percentile."""
        return (bytes_down / self.down_rate + self.examples * epochs * self.seconds_per_example
                + bytes_up / self.up_rate)

    def available(self, device: int, t: float) -> bool:
        trace = self.profiles[self.kind[device]].trace
        local = t + self.phase[device]
        powered = trace.battery_start_percent is None or _inside(trace.charging_s, trace.period_s, local)
        return powered and not _inside(trace.offline_s, trace.period_s, local) \
            and not _inside(trace.hot_s, trace.period_s, local)

    def lost(self, device: int, start: float, seconds: float, rng: np.random.Generator) -> bool:
        """True when the task never reports: dropout, or the device becomes unavailable before
        it would end (looked at every `CHECK_S` seconds and at the end)."""
        if rng.random() < self.dropout[device]:
            return True
        times = np.append(np.arange(start, start + seconds, CHECK_S), start + seconds)
        return not all(self.available(device, float(t)) for t in times)
