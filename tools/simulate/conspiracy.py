"""Colluding attackers in the one-thread simulator (simulation only).

ALIE, IPM and min-max/min-sum attackers build their update from all the colluders' honest
deltas of the round (and, omniscient, the honest devices' too). In the simulator devices train
one after another, so a colluder that answered at once would know only the colluders before it.
So in a cell with a colluding attack every device's link is a HeldUplink: the Updates the
devices publish are queued, not sent, until the driver has let every on-time device of the
round train (`release`); then they go to the coordinator in the order they were made, each
colluder's rewritten with the round's full knowledge. Holding changes no honest update and no
arrival order; it only lets the colluders see what they would see if they waited for each other.

Messages other than Updates pass straight through.
"""

from __future__ import annotations

from fedge.coordinator.robust.flat import flatten
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import decode_tensors

from .adversary import AttackSpec
from .attacks import Collusion
from .malicious import rewrite_update


class HeldUplink:
    """A device's transport whose Update publishes the Conspiracy holds; everything else is the inner one's."""

    def __init__(self, inner, device_id: str, conspiracy: Conspiracy):
        self.inner, self.device_id, self.conspiracy = inner, device_id, conspiracy

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if topic == device_topic(self.device_id, "update"):
            self.conspiracy.hold(self, topic, payload)
        else:
            self.inner.publish(topic, payload, qos=qos, retain=retain)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Conspiracy:
    def __init__(self, spec: AttackSpec, attackers: frozenset[str], compression: CompressionSpec, n: int, eta: float):
        self.spec, self.attackers, self.compression, self.n, self.eta = spec, attackers, compression, n, eta
        self.collusion = Collusion(omniscient=spec.omniscient)
        self.queue: dict[str, tuple[HeldUplink, str, bytes]] = {}  # update_id -> held publish, in order
        self.sent: dict[str, bytes] = {}  # update_id -> what went out, so a re-publish repeats it

    def uplink(self, transport, device_id: str) -> HeldUplink:
        return HeldUplink(transport, device_id, self)

    def hold(self, uplink: HeldUplink, topic: str, payload: bytes) -> None:
        update = decode_message(payload)
        if not isinstance(update, Update):
            uplink.inner.publish(topic, payload, qos=1)
            return
        if update.update_id in self.sent:
            uplink.inner.publish(topic, self.sent[update.update_id], qos=1)
            return
        if update.update_id not in self.queue:
            delta = flatten(decompress_update(decode_tensors(update.payload)))
            self.collusion.deposit(update.round_id, update.device_id, delta,
                                   attacker=update.device_id in self.attackers)
        self.queue.setdefault(update.update_id, (uplink, topic, payload))

    def release(self) -> bool:
        """Send everything held, in order, colluders' rewritten; True if anything went out."""
        queue, self.queue = self.queue, {}
        for update_id, (uplink, topic, payload) in queue.items():
            update = decode_message(payload)
            if update.device_id in self.attackers:
                rewritten = rewrite_update(update, self.compression, self.spec, self.collusion, self.n, self.eta)
                payload = encode_message(rewritten)
            self.sent[update_id] = payload
            uplink.inner.publish(topic, payload, qos=1)
        if len(self.sent) > 4096:  # only re-publishes of recent updates need it
            for key in list(self.sent)[:2048]:
                del self.sent[key]
        return bool(queue)
