"""The coordinator's side of the broker link (mixed into server.Coordinator): its subscriptions
at start, and what a restart or a reconnect must send again. A broker killed with -9 loses
PUBACKed QoS 1 messages, and one without persistence forgets retained ones, so both resend
the open round's model parts and the tasks of devices that have not answered (devices ignore
task ids they already hold), and the retained announcement."""

from __future__ import annotations

from fedge.edge_runtime.kernel.protocol import all_devices_topic
from fedge.edge_runtime.kernel.transport.base import Transport


class BrokerLink:
    """Uses the Coordinator's outbound, round, shell, clock, metrics and state."""

    @property
    def transport(self) -> Transport:
        return self.outbound.transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self.outbound.transport = transport

    @property
    def session(self) -> str:
        """In every Announcement: devices check in again when it changes."""
        return self.outbound.session

    def start(self) -> None:
        for channel in ("checkin", "update", "status", "fetch"):
            self.transport.subscribe(all_devices_topic(channel))
        if self.round is not None:  # resumed: tasks may have been lost with the old process or broker
            self.outbound.model(self.round)
            self._resend_tasks()
            self.metrics.round_begun(self.round.ctx.round_id)
        self.outbound.announce(self.state.version, self.round)

    def on_reconnect(self) -> None:
        """After the link to the broker came back: a broker killed with -9 loses PUBACKed
        QoS 1 messages, so resend the open round's tasks to devices that have not answered
        (they ignore task ids they already hold) and the retained announcement."""
        if self.round is not None:
            self.round.task_sent.clear()
            self.outbound.model(self.round)  # a broker without persistence forgot the retained parts
            self._resend_tasks()
        self.outbound.announce(self.state.version, self.round)

    def _resend_tasks(self) -> None:
        now, m = self.clock.now(), self.round.machine
        for device_id in m.selected:
            if m.expects(device_id):
                self.shell.resend(self.round, device_id, now)
