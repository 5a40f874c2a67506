"""The coordinator loop: the one place on the coordinator side that waits and sleeps.

It drives a Coordinator: begin a round when enough eligible devices are known, handle
messages as they come, let the round machine close rounds on time, and survive broker
outages (the MQTT transport reconnects by itself; the loop tells the coordinator, which
re-publishes what the broker may have lost). `fedge coordinator serve` and the MQTT
simulator both run this loop; they differ only in the callbacks.

No one message can stop it: an exception from handling a message (a bug, a store that
refuses a value) is logged, counted as a rejection named `internal:<ExceptionType>`, and
that message is dropped. Except a LeadershipError: a store fenced out by a newer leader
(leadership.py) ends the loop, since nothing this process does can be written any more.
The registry's queued last-seen refreshes are written every turn once due (registry.py); a
failed write of them is logged, counted (fedge_store_refresh_failures_total) and tried again a
flush interval later, except the errors that stop the service anyway (STOPS_THE_SERVICE).
Messages are handled in bursts of up to 500, whose accepted updates are stored in one
transaction before their Acks leave; if that write fails the loop stops with
GroupCommitFailed (group_commit.py says why). Abandoned rounds in a row space out the next (backoff.py).

A round the privacy budget refuses (coordinator/dp/budget.py) ends the loop when
privacy.on_exhausted = "stop" (after the last model's evaluation, like should_stop), with
`exhausted` holding the refusal; with "wait" the loop stays up and asks again now and then
(more eligible devices make the sampling rate, and so the round's cost, smaller).

With `directory_reload` set (service.py sets it on SIGHUP) the loop reads the identity directory
again at its next turn, between messages, also while it waits for the broker (secagg/reload.py).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from fedge.edge_runtime.kernel.errors import ConnectionLost, NotConnected, PublishRefused, TransportError
from fedge.edge_runtime.kernel.flood import doubling, worth_logging

from .backoff import abandoned_delay
from .errors import GroupCommitFailed, StoreGone, StoreLinkLost
from .leadership import LeadershipError
from .registry import REFRESH_FLUSH_S
from .rounds import RoundMachine
from .secagg.reload import reload_directory
from .secagg.round_state import BAD_SIGNATURE
from .server import Coordinator, RoundRecord

log = logging.getLogger("fedge.coordinator.loop")
# A failed group commit, a deposed leader (leadership.py), a state file deleted under us
# (state_file.py) or a broken PostgreSQL connection (pg_link.py): no message and no retry can
# mend these, so they end the loop.
STOPS_THE_SERVICE = (GroupCommitFailed, LeadershipError, StoreGone, StoreLinkLost)


class CoordinatorLoop:
    def __init__(
        self,
        coordinator: Coordinator,
        *,
        min_devices: int = 1,  # eligible devices needed before a round begins
        round_pause_s: float = 0.0,  # wait between a round closing and the next beginning (seconds)
        poll_s: float = 0.05,  # longest wait for a message before timed work (seconds)
        on_round: Callable[[RoundRecord], None] | None = None,
        should_stop: Callable[[RoundRecord], bool] | None = None,  # asked after every closed round
        on_begin: Callable[[RoundMachine], None] | None = None,  # told of every round begun
        # After should_stop, wait for the last model's evaluation at most this long (seconds; None: until
        # the evaluation's own deadline), then close it with the reports that came.
        finish_evaluation_s: float | None = None,
        # a secagg.reload.ReloadAsked (tests may pass any is_set/clear object): set, read the directory again
        directory_reload=None,
    ):
        self.coordinator = coordinator
        self.clock = coordinator.clock  # one clock per side: the coordinator's
        self.min_devices = min_devices
        self.round_pause_s = round_pause_s
        self.poll_s = poll_s
        self.on_round = on_round
        self.should_stop = should_stop
        if hasattr(coordinator, "stop_after"):  # async: a flush opens the next buffer before we see its record
            coordinator.stop_after = should_stop
        self.on_begin = on_begin
        self.finish_evaluation_s = finish_evaluation_s
        self.finishing = False  # should_stop said so: no new round, only the evaluation in flight
        self.finish_until = math.inf
        self.exhausted = None  # the privacy budget's refusal (dp BudgetVerdict) that ended the loop
        self.stop_event = threading.Event()
        self.directory_reload = directory_reload
        self.next_begin = 0.0
        self.abandoned_in_a_row = 0
        self._started = False
        self.refresh_failures = 0  # failed writes of the registry's queued refreshes (_flush_refreshes)
        self._waits_said = 0  # "not started yet" tries so far: logged at 1, 2, 4, 8, ..., not every poll
        self._waiting_said = ("", 0.0)  # the last "waiting for" line and when it may be repeated

    def run(self) -> None:
        """Run until `stop()` or `should_stop` says so (a caller may run it again, for the next round)."""
        c = self.coordinator
        self.finishing, self.finish_until = False, math.inf
        while not self._start():
            self._reload_if_asked()
            if self.stop_event.wait(self.poll_s):
                return
        seen = getattr(c.transport, "connection_count", 1)
        while not self.stop_event.is_set():
            if self.finishing and (c.evaluations.run is None or self.clock.now() >= self.finish_until):
                if c.evaluations.run is not None:
                    c.evaluations.close(self.clock.now(), "closed as the service stops")
                return
            self._reload_if_asked()  # before a selection: the next round is the first with the new map
            try:
                if not self.finishing:
                    self._maybe_begin()
                handled = 0
                with c.store.burst():  # one store transaction for the burst's updates (group_commit.py)
                    while handled < 500 and self._pump(self.poll_s if handled == 0 else 0.0):
                        handled += 1
                count = getattr(c.transport, "connection_count", 1)
                if count != seen:
                    seen = count
                    c.on_reconnect()  # resend what the broker may have lost
                record = c.tick()
                self._flush_refreshes()
            except (ConnectionLost, NotConnected) as exc:
                log.warning("coordinator: %s; waiting for the broker", exc)
                self.stop_event.wait(self.poll_s)
                continue
            except PublishRefused as exc:  # the ACL refused one of our publishes: say so and go on
                log.error("coordinator: PublishRefused: %s", exc)
                continue
            except TransportError as exc:
                if not self.stop_event.is_set():
                    log.error("coordinator: transport closed: %s", exc)
                return
            if record is not None:
                self.abandoned_in_a_row = 0 if record.committed else self.abandoned_in_a_row + 1
                cfg = c.config
                wait = abandoned_delay(self.abandoned_in_a_row, cfg.abandon_backoff_s, cfg.abandon_backoff_max_s)
                self.next_begin = self.clock.now() + max(self.round_pause_s, wait)
                if self.on_round:
                    self.on_round(record)
                if self.should_stop and self.should_stop(record):
                    if c.evaluations.run is None:
                        return
                    self.finishing = True  # the last model's evaluation closes by its deadline, or ours
                    if self.finish_evaluation_s is not None:
                        self.finish_until = self.clock.now() + self.finish_evaluation_s

    def _pump(self, timeout: float) -> bool:
        """Handle one message; an exception from handling it costs that message, not the service."""
        c = self.coordinator
        try:
            return c.pump(timeout)
        except (TransportError, *STOPS_THE_SERVICE):  # the link's troubles: run() handles them
            raise
        except Exception as exc:  # noqa: BLE001 - the point: whatever one message does, serve the next
            reason = f"internal:{type(exc).__name__}"
            c.rejections[reason] += 1
            c.metrics.rejected(reason)
            n = c.rejections[reason]
            if worth_logging(n):  # a flood of one fault must not flood the log
                log.error("coordinator: dropped a message whose handling failed (%s, %d so far)", reason, n,
                          exc_info=True)
            return True

    def _flush_refreshes(self) -> None:
        """The registry's queued last-seen refreshes, once a minute (registry.py). A failed write
        (a full disk, a locked or unreachable database) stays queued for the next flush interval:
        the check-ins go on, and the stored times only grow older meanwhile."""
        c = self.coordinator
        try:
            c.registry.flush_refreshes(self.clock.now())
        except STOPS_THE_SERVICE:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: a refresh is worth no stopped service
            self.refresh_failures += 1
            c.metrics.store_refresh_failures.inc()
            if worth_logging(self.refresh_failures):
                log.error("coordinator: writing the queued last-seen refreshes failed (%s: %s, %d so far); "
                          "retrying in %.0f s", type(exc).__name__, exc, self.refresh_failures, REFRESH_FLUSH_S)

    def _reload_if_asked(self) -> None:
        """SIGHUP asked for the identity directory again: read it here, where the loop owns the
        coordinator and no message is half handled. A refused file keeps the old map (reload.py)."""
        if self.directory_reload is not None and self.directory_reload.is_set():
            self.directory_reload.clear()  # first: the read below comes after any SIGHUP this clears
            c = self.coordinator
            changed = reload_directory(c.shell, c.metrics)
            if changed and (let_in := c.sidelined.pardon(changed, BAD_SIGNATURE, self.clock.now())):
                # listed or re-keyed now, a device left out for a bad signature may hold its key again
                log.info("coordinator: SIGHUP: %d device(s) left out for a bad signature are selectable again (new "
                         "keys in the directory): %s", len(let_in), ", ".join(let_in[:10]))

    def stop(self) -> None:
        self.stop_event.set()

    def _start(self) -> bool:
        if self._started:
            return True
        try:
            self.coordinator.start()
        except (NotConnected, ConnectionLost) as exc:
            self._waits_said += 1
            if doubling(self._waits_said):
                log.info("coordinator: not started yet (try %d): %s", self._waits_said, exc)
            return False
        except TransportError as exc:  # e.g. no SUBACK in time from an overloaded broker
            if getattr(self.coordinator.transport, "closed", False):
                raise
            log.warning("coordinator: start failed, retrying: %s", exc)
            return False
        self._started = True
        return True

    def _maybe_begin(self) -> None:
        c = self.coordinator
        now = self.clock.now()
        if c.round is not None or now < self.next_begin:
            return
        eligible = len(c.eligible_devices())
        if eligible < self.min_devices or not c.begin_round():
            if c.privacy.exhausted is not None:  # refused by the budget, logged and exported by it
                if c.config.privacy.on_exhausted == "stop":
                    self.exhausted, self.finishing = c.privacy.exhausted, True
                self.next_begin = now + max(self.poll_s, 5.0)
                return
            self._say_waiting(eligible, now)
            self.next_begin = now + max(self.poll_s, 0.5)  # ask again soon; check-ins may be on their way
            return
        c.metrics.devices_needed.set(0)
        self._waiting_said = ("", 0.0)
        if self.on_begin and c.round is not None:  # None: a noise-only round, closed as it began
            self.on_begin(c.round.machine)

    def _say_waiting(self, eligible: int, now: float) -> None:
        """Ops see why no round begins: a log line when the picture changes (at most once a
        minute otherwise) and the fedge_devices_needed gauge."""
        c, need = self.coordinator, max(self.min_devices, 1)
        c.metrics.devices_needed.set(max(0, need - eligible))
        why = c.registry.ineligible_reasons()
        if c.shell.unlisted:  # eligible, but the identity directory lacks them (secagg/shell.selectable)
            why["secagg_no_identity"] += len(c.shell.unlisted)
        sidelined = getattr(c, "sidelined", None)  # async has none
        # eligible, but sitting out a secure-aggregation offence (sidelined.py); an ineligible one has its reason
        active = sidelined.active(now) if sidelined else set()  # the fleet-wide list only when one sits out
        if active and (out := active.intersection(c.registry.eligible_devices())):
            why["sidelined"] += len(out)
        line = (f"waiting for {need} eligible device{'s' if need > 1 else ''}: {len(c.registry)} registered, "
                f"{eligible} eligible" + (f" ({', '.join(f'{r} x{n}' for r, n in why.most_common(5))})" if why else ""))
        if line != self._waiting_said[0] or now >= self._waiting_said[1]:
            log.info("coordinator: %s", line)
            self._waiting_said = (line, now + 60.0)
