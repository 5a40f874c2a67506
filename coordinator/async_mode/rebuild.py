"""The flights a restarted async coordinator rebuilds from its journal's tasks (server._resume)."""

from __future__ import annotations

from ..registry import Registry
from .journal import MemoryJournal, SqliteJournal
from .machine import AsyncMachine, Dispatched, Flight, on_event


def rebuild_flights(machine: AsyncMachine, journal: SqliteJournal | MemoryJournal, registry: Registry,
                    now: float, wall: float, deadline_s: float) -> AsyncMachine:
    """Every task the journal holds back in flight, one per device (a second one is dropped: not
    written by this code). The journal does not keep a slot's release (machine.py), so a flight
    holds its slot only when the restored registry says its device may train: eligible at its
    last check-in and not parked. Holding them all would stall dispatch until released flights end
    (a device that went ineligible or offline would keep its slot after all), where the registry
    gives each the slot the running coordinator had given it, as of the device's last stored row."""
    for t in journal.tasks():
        if machine.flight(t.device_id) is None:
            device = registry.get(t.device_id)
            may_train = device is not None and device.eligible and not device.parked
            flight = Flight(t.task_id, t.round_id, t.base_version, now + t.left(wall, deadline_s), may_train)
            machine, _ = on_event(machine, Dispatched(t.device_id, flight))
        else:
            journal.drop_task(t.task_id)
    return machine
