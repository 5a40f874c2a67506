"""SIGHUP re-reads the identity directory ([coordinator.secure_aggregation] directory_file), and
nothing else of the config: a fleet that provisions devices every day need not restart its
coordinator for each (a restart also stops an open secure round).

The service's signal handler only sets a flag (service.run_service); the coordinator loop, which
owns the coordinator, reads the file between messages (loop.CoordinatorLoop._reload_if_asked)
with the start's loader and checks (config.load_identities: a regular file, 256 MiB at most, JSON
of device id -> 32-byte hex key, not empty). The shell takes the new map whole, so it applies from
the next selection (shell.selectable) and the next round's key checks; an open secure round keeps
the map it was selected with, since its protocol state holds its own reference
(round_state.SecAggRound.identities): a device removed mid-round is not refused at a later stage of
a round that selected it, nor is one added mid-round checked against a map that selected without
it. A file refused at reload keeps the old map and the service goes on: one log line naming the
file and the error, and fedge_secagg_directory_reloads_total{result="failed"}.

A PostgreSQL standby has no loop yet: a SIGHUP leaves the flag set, and its loop reads the file
when it takes over (a broken file then keeps the map read at the standby's start, never stops it).
"""

from __future__ import annotations

import logging

from fedge.edge_runtime.kernel.secagg.identity_files import directory_changes

from .config import SecAggConfig, load_identities

log = logging.getLogger("fedge.coordinator")

RESULTS = ("ok", "failed")  # fedge_secagg_directory_reloads_total's labels


class ReloadAsked:
    """What SIGHUP sets and the loop reads: set / is_set / clear, as a threading.Event's, with no
    lock. A Python signal handler runs in the main thread between two bytecodes, and the loop runs
    in the main thread too: an Event's set() in the handler waited on the lock the interrupted
    clear() held, forever (reproduced with a flood of SIGHUPs; systemd would not restart a hung
    service). Plain int reads and writes need no lock. A SIGHUP that lands inside clear() is lost
    to no one: the loop reads the file after clear(), so that read is after the signal too."""

    def __init__(self) -> None:
        self.asked = 0  # SIGHUPs received
        self.done = 0  # the count the last clear() saw

    def set(self) -> None:
        self.asked += 1

    def is_set(self) -> bool:
        return self.asked != self.done

    def clear(self) -> None:
        self.done = self.asked


def reloadable(sa: SecAggConfig) -> bool:
    """Whether SIGHUP reloads anything: a secure coordinator with a directory (else it is ignored)."""
    return sa.enabled and bool(sa.directory_file)


def reload_directory(shell, metrics) -> set[str] | None:
    """Read the shell's directory_file again and give the shell the new map; returns the devices
    added or re-keyed (their next advertisements are checked against a key they were not before),
    or None (the old map kept, logged and counted) when the file is refused."""
    path, old = shell.sa.directory_file, shell.identities or {}
    try:
        new = load_identities(path)
    except Exception as exc:  # noqa: BLE001 - the point: a bad file at reload is worth no stopped service
        metrics.directory_reloads.labels("failed").inc()
        log.error("coordinator: SIGHUP: identity directory %s not reloaded (%s); the %d identities read before "
                  "stay in use", path, exc, len(old))
        return None
    added, removed, rekeyed = directory_changes(old, new)
    shell.identities = new  # a new dict: the open round's state keeps the old one (see above)
    metrics.directory_reloads.labels("ok").inc()
    log.info("coordinator: SIGHUP: identity directory %s reloaded: %d identities, %d added, %d removed, %d "
             "re-keyed; applies from the next selection (an open round keeps the directory it was selected with); "
             "the rest of the config applies only at a restart", path, len(new), len(added), len(removed), len(rekeyed))
    return added | rekeyed
