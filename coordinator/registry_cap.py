"""How many devices the registry may hold ([coordinator] max_devices), and the gate every
check-in passes before it is registered: the registry's room, then its device's rate.

Every check-in from an id the coordinator has not seen adds a device: a row in the store, a
record in memory, and one more entry that each selection sorts and draws from. The shipped
broker ACL gives every device id its own login; on an open broker (a dev setup, a misconfigured
fleet) one client can check in as any number of ids, and before this cap the registry grew with
every one. A check-in from a NEW id while the registry holds max_devices is refused by name
(`registry_full`): nothing is stored, no Pace goes back and the check-in limit keeps no bucket
for it; it is logged (FloodLog: the first ten, then every power of two) and counted in
fedge_rejections_total{reason="registry_full"}. A device the registry knows is never refused by
the cap: its check-ins, updates, declines and last will go on as before.

The default (limits.MAX_FLEET, 1,000,000) is the most devices one round may ask for, so no
config that loads today is refused by it, and 100 times the largest fleet fedge runs (the
10,000-device simulation). Measured (a flood of N new ids from one client through
Coordinator.pump, in-memory broker, SQLite state_db): each registered id cost one SQLite commit
of the coordinator's thread (3.4 ms on a loaded 2-core machine; a reviewer measured 0.5 ms on a
quiet one, as for an eligibility change), 58 B of state db and 0.55-0.65 KB of resident memory
(+5.4 MiB at N = 10,000, +31 MiB at 50,000), of which about 0.2 KB is the registry's record; the
rest was not broken down (the check-in limit's buckets, dropped at its next prune once refilled,
and SQLite's cache); the selection, which walks the registry, took 3 ms at 10,000 devices and
17 ms at 50,000. The registry alone (no store) at 100,000 and 1,000,000 records: 221 and 207 B a
device, +198 MiB and 72 ms per selection at the default cap. So a full default registry is
about 0.2 GB of memory, 60 MB on disk and a tenth of a second per round: bounded, where it was
not, and about 10 minutes to an hour of flooding away. A refused check-in costs 0.06 ms through pump and
keeps nothing. An operator who wants a tighter bound sets it to a few times the fleet.

No device is evicted to make room. The ids a flood brings are all fresh, so making room by age
would push out exactly the honest devices that are away for a while (a board that trains at
night, a fleet switched off for a week) and keep the flood; the registry's size is also the N
of SCAFFOLD's control step (server.py, Aggregate), which should not move with an attacker's
traffic. A fleet that outgrows the cap needs the cap raised, which the refusals' log line says;
ids that churn (boards re-flashed under new names) are the operator's to drop, with the service
stopped: `fedge coordinator forget-devices` (forget_devices.py). fedge_devices_max exports the cap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .checkin_limit import CheckInLimit
from .errors import RegistryFull, UpdateRejected

log = logging.getLogger("fedge.coordinator")


class CheckInGate:
    """`refusal(device_id, now)`: RegistryFull for a new id while the registry is full, else the
    check-in limit's answer (checkin_limit.py); None: register it."""

    def __init__(self, registry: Mapping[str, object], max_devices: int, limit: CheckInLimit):
        if max_devices < 1:
            raise ValueError(f"need max_devices >= 1, got {max_devices}")
        self.registry = registry
        self.max_devices = max_devices
        self.limit = limit
        self._told_over = False

    def refusal(self, device_id: str, now: float) -> UpdateRejected | None:
        known = len(self.registry)
        if known >= self.max_devices and device_id not in self.registry:
            self._tell_over(known)
            return RegistryFull(f"{known:,} devices known, max_devices = {self.max_devices:,}: a new device id is "
                                "not registered (raise max_devices if the fleet is this large)")
        return self.limit.refusal(device_id, now)

    def _tell_over(self, known: int) -> None:
        """Once: a registry restored with more devices than the cap (the cap was lowered) keeps them all."""
        if known > self.max_devices and not self._told_over:
            self._told_over = True
            log.warning("the registry holds %d devices, over max_devices = %d (restored from the store): all "
                        "are kept, and every new device id is refused", known, self.max_devices)


def check_in_gate(config, registry: Mapping[str, object], metrics=None) -> CheckInGate:
    """The gate of a CoordinatorConfig: max_devices, checkin_burst and checkin_refill_s. metrics: a
    CoordinatorMetrics whose fedge_devices_max it sets, so a dashboard reads the cap beside
    fedge_devices_registered instead of from the config file."""
    if metrics is not None:
        metrics.max_devices.set(config.max_devices)
    return CheckInGate(registry, config.max_devices, CheckInLimit(config.checkin_burst, config.checkin_refill_s))
