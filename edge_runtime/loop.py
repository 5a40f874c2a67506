"""The device loop: the one place on a device that waits, sleeps and survives link loss.

It drives a DeviceAgent: handle messages as they come, let the agent do its time-driven
work, and when the transport reconnects (connection_count went up) tell the agent, which
resends every unacknowledged update and checks in again.
"""

from __future__ import annotations

import logging
import threading

from .agent import DeviceAgent
from .kernel.errors import ConnectionLost, FedgeError, NotConnected, PublishRefused, TransportError
from .kernel.flood import doubling

log = logging.getLogger("fedge.device.loop")


class AgentLoop:
    def __init__(self, agent: DeviceAgent, poll_s: float = 0.2):
        self.agent = agent
        # Longest wait for a message before doing timed work (seconds); the agent reads its own clock.
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self._waits_said = 0  # "not started yet" lines so far: said at 1, 2, 4, 8, ... tries, not every poll

    def run(self) -> None:
        """Run until `stop()`; returns when the transport is closed for good."""
        transport = self.agent.transport
        while not self._start():
            if self.stop_event.wait(self.poll_s):
                return
        seen = getattr(transport, "connection_count", 1)
        while not self.stop_event.is_set():
            try:
                self.agent.poll(self.poll_s)
                count = getattr(transport, "connection_count", 1)
                if count != seen:
                    seen = count
                    self.agent.on_reconnect()
                self.agent.tick()
            except (ConnectionLost, NotConnected) as exc:
                log.info("device %s: %s; waiting for the link", self.agent.device_id, exc)
                self.stop_event.wait(self.poll_s)
            except PublishRefused as exc:
                # The ACL refused something we sent. Unacknowledged updates stay on disk and are
                # resent with backoff, so they get through once the broker lets them.
                log.error("device %s: PublishRefused: %s", self.agent.device_id, exc)
                self.stop_event.wait(self.poll_s)
            except TransportError as exc:
                if not self.stop_event.is_set():
                    log.warning("device %s: transport closed: %s", self.agent.device_id, exc)
                return
            except (FedgeError, OSError) as exc:
                # One bad message or a full disk must not kill the device: log, back off, go on.
                log.error("device %s: %s: %s", self.agent.device_id, type(exc).__name__, exc)
                self.stop_event.wait(self.poll_s)
            except Exception:  # a bug must not silence the device either; it is logged in full
                log.exception("device %s: unexpected error; the loop goes on", self.agent.device_id)
                self.stop_event.wait(self.poll_s)

    def stop(self) -> None:
        self.stop_event.set()

    def _start(self) -> bool:
        if self.agent.started:
            return True
        try:
            self.agent.start()
            return True
        except (NotConnected, ConnectionLost) as exc:
            self._waits_said += 1  # every poll_s while the broker is away: 5 lines a second on a Pi's journal
            if doubling(self._waits_said):
                log.info("device %s: not started yet (try %d): %s", self.agent.device_id, self._waits_said, exc)
            return False
        except PublishRefused as exc:  # subscribed, but the broker refuses what we publish
            log.error("device %s: PublishRefused while starting: %s", self.agent.device_id, exc)
            self.stop_event.wait(max(self.poll_s, 5.0))  # start publishes again: not in a tight loop
            return False
        except TransportError as exc:  # e.g. no SUBACK in time from an overloaded broker
            if getattr(self.agent.transport, "closed", False):
                raise
            log.warning("device %s: start failed, retrying: %s", self.agent.device_id, exc)
            return False
