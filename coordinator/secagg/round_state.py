"""One secure round's protocol state on the coordinator: what each stage sends, what each
reply adds, and the unmasked sum at the end. No I/O: the shell (shell.py) publishes.

The coordinator relays but cannot read: shares arrive sealed for their receivers, masked
inputs are uniform on their own, and the unmask stage reveals self-mask seeds of the alive
and mask keys of the dropped only, never both for one device (each honest device checks the
sets). It keeps no individual update: only masked vectors, and their sum once unmasked.

With the fleet's identity directory ([coordinator.secure_aggregation] directory_file) it also
refuses a key advertisement whose signature that directory does not verify (BAD_SIGNATURE), or
from a device it lacks (NO_IDENTITY). Such a device is absent from the cohort, as one that did
not advertise; relayed, it made every neighbour that checks signatures decline the whole round
(session.shares_for_neighbours), so one device stalled all of its neighbours. A bad signer is
also left out of the next rounds for a while (coordinator/sidelined.py), and the stage stops
waiting for it (shell.admit), so anything it sends after in that round, the same advertisement
again (MQTT QoS 1 may) included, is refused as not expected: one offence per device and round.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.edge_runtime.kernel.protocol import TrainTask
from fedge.edge_runtime.kernel.secagg import identity
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, packing_for
from fedge.edge_runtime.kernel.secagg.keys import contributory
from fedge.edge_runtime.kernel.secagg.masking import sum_mod
from fedge.edge_runtime.kernel.secagg.messages import (
    SHARING_VERSION,
    EncryptedShares,
    KeyAdvertisement,
    KeyDirectory,
    MaskedInput,
    PeerKeys,
    SealedShare,
    SecAggSpec,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    sealed_share_bytes,
)
from fedge.edge_runtime.kernel.secagg.packing import unpack
from fedge.edge_runtime.kernel.secagg.recovery import LIARS, unmask_answers
from fedge.edge_runtime.kernel.secagg.session import BAD_KEY, BAD_SIGNATURE
from fedge.edge_runtime.kernel.secagg.shamir import value_bytes, value_in_field
from fedge.edge_runtime.kernel.secagg.shared_encoding import decode_count, decode_mean, implausible, sent_size

from .stages import ADVERTISE, MASK, SHARE, UNMASK


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# Why a device's reply is refused (accept); the metrics start each at zero.
WRONG_STAGE = "secagg_wrong_stage"
MODEL_MISMATCH = "secagg_model_mismatch"
BAD_SHARES = "secagg_bad_shares"
BAD_SHAPE = "secagg_bad_shape"
NO_IDENTITY = "secagg_no_identity"  # an advertisement from a device the identity directory lacks
GROUP_OUT = "secagg_group_out"  # sharded: the sender's shard group left the round (sharding/secure.py)
REPLY_REASONS = (WRONG_STAGE, MODEL_MISMATCH, BAD_KEY, BAD_SIGNATURE, NO_IDENTITY, BAD_SHARES, BAD_SHAPE, GROUP_OUT)

REPLY_OF = {ADVERTISE: KeyAdvertisement, SHARE: EncryptedShares, MASK: MaskedInput, UNMASK: UnmaskResponse}


@dataclass
class SecAggRound:
    round_id: int
    spec: SecAggSpec
    model_sha256: str  # sha256 of the params every task carries
    graph_seed: int
    shapes: dict[str, tuple[int, ...]]  # shared params: the vector is their concatenation in name order
    graph_for: object  # cohort size -> (k, t): SecAggConfig.graph_for
    # device id -> Ed25519 identity public key (secagg/config.load_identities); None: unchecked
    identities: Mapping[str, bytes] | None = None
    adverts: dict[str, KeyAdvertisement] = field(default_factory=dict)
    cohort: tuple[str, ...] = ()
    k: int = 0
    t: int = 0
    graph: dict[str, tuple[str, ...]] = field(default_factory=dict)
    outbox: dict[str, dict[str, bytes]] = field(default_factory=dict)  # receiver -> sender -> sealed shares
    delivered: dict[str, tuple[str, ...]] = field(default_factory=dict)  # receiver -> senders it got shares of
    unheld: dict[str, frozenset[str]] = field(default_factory=dict)  # receiver -> of those, shares that did not open
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    alive: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    answers: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    blamed: set[str] = field(default_factory=set)  # senders whose shares too few could open: sidelined
    left_out: set[str] = field(default_factory=set)  # holders whose unmask answer was left out (recovery.py)

    @property
    def dimension(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())

    @property
    def packing(self) -> int:
        """Shamir packing of the round's shares, from the graph's shape as every device derives it."""
        return packing_for(self.k, len(self.cohort))

    @property
    def sent_length(self) -> int:
        """Coordinates each device masks: the round's shared subset (and the count coordinate of
        adaptive clipping under distributed DP)."""
        return sent_size(self.dimension, self.spec)

    # ------------------------------------------------------------------ requests

    def open_stage(self, stage: str, asked: tuple[str, ...]) -> None:
        """What the stage fixes when it starts: the cohort and graph (share), the survivors
        and the dropped (unmask)."""
        if stage == SHARE:
            self.cohort = tuple(sorted(asked))
            self.k, self.t = self.graph_for(len(self.cohort))
            self.graph = neighbour_graph(self.cohort, self.k, self.graph_seed)
        elif stage == UNMASK:
            shared = set(self.delivered)  # the mask stage asked those who shared
            self.alive = tuple(sorted(asked))
            self.dropped = tuple(sorted(shared - set(asked)))

    def request(self, stage: str, device_id: str, task_id: str, task: TrainTask | None = None):
        """The stage's message for one device; `task` (the TrainTask) only for the first stage."""
        if stage == ADVERTISE:
            return SecAggTask(task, self.spec, sharing=SHARING_VERSION)
        if stage == SHARE:
            keys = tuple(PeerKeys(p, self.adverts[p].cipher_public, self.adverts[p].mask_public,
                                  self.adverts[p].model_sha256, self.adverts[p].signature)
                         for p in self.graph[device_id] if p in self.adverts)
            return KeyDirectory(device_id, self.round_id, task_id, self.cohort, self.k, self.t, self.graph_seed, keys)
        if stage == MASK:
            inbox = self.outbox.get(device_id, {})
            self.delivered[device_id] = tuple(sorted(inbox))
            return ShareDelivery(device_id, self.round_id, task_id,
                                 tuple(SealedShare(sender, blob) for sender, blob in sorted(inbox.items())))
        if stage == UNMASK:
            return UnmaskRequest(device_id, self.round_id, task_id, self.alive, self.dropped, self.model_sha256)
        raise ValueError(f"no secure-aggregation stage {stage!r}")

    # ------------------------------------------------------------------ replies

    def accept(self, stage: str, reply) -> str | None:
        """None when the reply counts, else the reason it is refused."""
        if not isinstance(reply, REPLY_OF[stage]):
            return WRONG_STAGE
        sender = reply.device_id
        if isinstance(reply, KeyAdvertisement):
            if (why := self._refusal(reply)) is not None:
                return why
            self.adverts[sender] = reply
        elif isinstance(reply, EncryptedShares):
            peers = sorted(p for p in self.graph.get(sender, ()) if p in self.adverts)  # whose keys it was sent
            box_bytes = sealed_share_bytes(self.packing)
            if len(reply.boxes) != len(peers) * box_bytes:
                return BAD_SHARES
            for peer, box in zip(peers, _chunks(reply.boxes, box_bytes)):
                self.outbox.setdefault(peer, {})[sender] = box
        elif isinstance(reply, MaskedInput):
            if reply.length != self.sent_length or reply.field_bits != self.spec.field_bits:
                return BAD_SHAPE
            if not set(reply.unopened) <= set(self.delivered.get(sender, ())):
                return BAD_SHARES  # it can only fail to open what it was sent
            self.masked[sender] = unpack(reply.data, reply.length, reply.field_bits)
            self.unheld[sender] = frozenset(reply.unopened)  # it masked with them, and holds no share of them
        elif isinstance(reply, UnmaskResponse):
            alive, dropped = set(self.alive), set(self.dropped)
            unheld = self.unheld.get(sender, frozenset())
            owners = [o for o in self.delivered.get(sender, ()) if (o in alive or o in dropped) and o not in unheld]
            size = value_bytes(self.packing)
            if len(reply.values) != len(owners) * size:
                return BAD_SHARES
            revealed = {o: ("self" if o in alive else "mask", int.from_bytes(value, "big"))
                        for o, value in zip(owners, _chunks(reply.values, size))}
            if not all(value_in_field(y, self.packing) for _, y in revealed.values()):  # no field element
                return BAD_SHARES
            self.answers[sender] = revealed
        return None

    def _refusal(self, advert: KeyAdvertisement) -> str | None:
        """Why an advertisement joins no cohort (None: it does)."""
        if advert.model_sha256 != self.model_sha256:
            return MODEL_MISMATCH
        if not (contributory(advert.cipher_public) and contributory(advert.mask_public)):
            return BAD_KEY  # its neighbours' agreements would all fail
        return self._unvouched(advert)  # its neighbours would decline the round

    def _unvouched(self, advert: KeyAdvertisement) -> str | None:
        """Why the identity directory does not vouch for an advertisement's keys (None: it does,
        or there is no directory). The transcript is the one its neighbours check."""
        if self.identities is None:
            return None
        public = self.identities.get(advert.device_id)
        if public is None:
            return NO_IDENTITY
        signed = identity.transcript(self.round_id, advert.device_id, advert.cipher_public, advert.mask_public,
                                     advert.model_sha256)
        return None if identity.verify(public, advert.signature, signed) else BAD_SIGNATURE

    # ------------------------------------------------------------------ the sum

    def unmasked_sum(self) -> tuple[np.ndarray, int]:
        """The survivors' field sum over the sent coordinates, unmasked, and their number.
        Raises UnmaskFailed when some secret has fewer than t shares (the round is then abandoned).

        A sender is blamed (and sidelined: coordinator/sidelined.py) when so many survivors could
        not open its shares that fewer than t hold them: the round cannot be unmasked because of
        it, and the rounds after would fail the same way. Framing an honest sender so takes more
        than (its holders - t) liars, the corruption secure aggregation's t is chosen against, and
        more than recovery.LIARS (2) reports in any case: where h - t < LIARS (a cohort of three,
        where h = t, or dropouts) one device's word sidelined an honest sender, so there the round
        is abandoned with no one named; fewer reports cost the sender nothing. So is an owner
        whose own shares decode to no secret it committed to when neither one holder nor decoding
        explains the failure (recovery.wrong_dealers): it dealt them wrong, and would spoil every
        round it is drawn into. Only where more than
        recovery.LIARS (2) of its holders, and more than (its holders - t) // 2, would have to lie
        to make an honest owner's shares look so: else two colluding devices could sideline any
        honest one, and the round is abandoned with no one named. A holder whose unmask answer
        recovery.py leaves out (`left_out`: the one wrong holder's, or the shares off the decoded
        polynomials of several: recovery.decoded_liars) is named but not sidelined: a dealer that
        dealt it a wrong share looks the same, and the sum is right without its shares. A sum the
        survivors' inputs cannot add up to (a self seed colluders moved where no share check can
        tell: recovery.py) raises ImplausibleSum, an Unexplained: abandoned, no one named. Without
        distributed DP that check lets one lying holder be named where h - t = 2 (recovery.py)."""
        reporters: dict[str, int] = {}
        for s in self.alive:
            for sender in self.unheld.get(s, ()):
                reporters[sender] = reporters.get(sender, 0) + 1
        for sender, n in reporters.items():
            holders = sum(1 for s in self.alive if sender in self.delivered.get(s, ()))
            if holders - n < self.t and n > LIARS:  # LIARS reports could all be lies (docstring)
                self.blamed.add(sender)
        masked_with = {g: {s: self.adverts[s].mask_public for s in self.alive if g in self.delivered.get(s, ())}
                       for g in self.dropped}
        total = unmask_answers(sum_mod((self.masked[s] for s in self.alive), self.spec.field_bits, self.sent_length),
                               self.answers, self.cohort, self.t, self.alive, self.dropped, masked_with,
                               self.round_id, self.spec.field_bits, packing=self.packing,
                               workers=os.cpu_count() or 1,
                               mask_publics={g: self.adverts[g].mask_public for g in self.dropped},
                               left_out=self.left_out, dealers=self.blamed,
                               check=None if self.spec.distributed_dp else self._implausible)
        return total, len(self.alive)

    def _implausible(self, total: np.ndarray) -> str | None:
        return implausible(total, len(self.alive), self.spec)

    def mean_delta(self) -> tuple[dict[str, np.ndarray], int, float | None]:
        """The survivors' mean delta (equal weights), their number (unmasked_sum, decoded), and
        adaptive clipping's noised centred count of devices within S (None without it)."""
        total, n = self.unmasked_sum()
        return (params_from_flat(decode_mean(total, n, self.dimension, self.spec), self.shapes), n,
                decode_count(total, self.spec))


def params_from_flat(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """A decoded (d,) mean back into float32 tensors, names in sorted order (the order the
    devices flatten their deltas in)."""
    out, at = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name]))
        out[name] = flat[at:at + size].reshape(shapes[name]).astype(np.float32)
        at += size
    return out
