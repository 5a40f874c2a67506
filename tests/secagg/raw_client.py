"""A secure-aggregation client fedge did not write: it speaks the wire schema itself (the kernel's
messages and math, not SecAggParticipant) and can play any phase wrong. `tamper` maps a stage
(advertise, share, mask, unmask) to a function (client, honest reply) -> messages to send
instead: [] stays silent (a dropout there), several are sent in order.

`values` is the client's own input, field elements it chooses, so a test knows exactly what the
cohort's sum must be (`field_sum`: the plain integer sum, mod 2^m)."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, device_topic
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph
from fedge.edge_runtime.kernel.secagg.masking import mask_input
from fedge.edge_runtime.kernel.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    KeyDirectory,
    MaskedInput,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_runtime.kernel.secagg.packing import pack
from fedge.edge_runtime.kernel.secagg.shamir import value_bytes
from fedge.edge_runtime.kernel.secagg.shared_encoding import sent_size
from fedge.edge_runtime.kernel.update_codec import decode_tensors


class RawClient:
    def __init__(self, fleet, device_id: str, tamper=None, value: int = 5):
        self.device_id = device_id
        self.tamper = tamper or {}
        self.value = value  # every coordinate of its input
        self.t = fleet.broker.connect(device_id)
        self.t.subscribe(device_topic(device_id, "task"))
        self.session: sess.DeviceSession | None = None
        self.spec = None
        self.task_id = ""
        self.values: np.ndarray | None = None
        self.seen: list = []  # every request it got
        self.t.publish(device_topic(device_id, "checkin"),
                       encode_message(CheckIn(device_id, eligible=True, reason="", num_examples=10)))

    def poll(self, timeout: float) -> bool:
        msg = self.t.receive(timeout)
        if msg is None:
            return False
        request = decode_message(msg.payload)
        self.seen.append(request)
        stage, reply = self._honest(request)
        if reply is not None or stage in self.tamper:
            out = self.tamper[stage](self, reply) if stage in self.tamper else [reply]
            for m in out:
                self.send(m)
        return True

    def send(self, message) -> None:
        self.t.publish(device_topic(self.device_id, "update"), encode_message(message))

    # ------------------------------------------------------------------ the protocol, honestly

    def _honest(self, request):
        if isinstance(request, SecAggTask):
            task = request.task
            self.spec, self.task_id = request.spec, task.task_id
            dimension = sum(int(math.prod(v.shape)) for v in decode_tensors(task.params))
            self.values = np.full(sent_size(dimension, self.spec), self.value, dtype=np.uint32)
            self.session = sess.start(self.device_id, task.round_id, hashlib.sha256(task.params).hexdigest())
            s = self.session
            return "advertise", KeyAdvertisement(self.device_id, s.round_id, self.task_id, s.cipher.public,
                                                 s.mask.public, s.model_sha256)
        if isinstance(request, KeyDirectory):
            cohort = tuple(sorted(request.cohort))
            graph = neighbour_graph(cohort, min(request.neighbours, len(cohort) - 1), request.graph_seed)
            advertised = {p.device_id: sess.Advertised(p.cipher_public, p.mask_public, p.model_sha256)
                          for p in request.keys}
            self.session, sealed = sess.shares_for_neighbours(self.session, cohort, graph[self.device_id],
                                                              request.threshold, advertised)
            return "share", EncryptedShares(self.device_id, request.round_id, self.task_id,
                                            b"".join(sealed[p] for p in sorted(sealed)))
        if isinstance(request, ShareDelivery):
            self.session = sess.receive_shares(self.session, {sh.peer: sh.ciphertext for sh in request.shares})
            s = self.session
            y = mask_input(self.values, self.device_id, s.self_seed, s.mask.private, sess.masking_peers(s),
                           s.round_id, self.spec.field_bits)
            return "mask", MaskedInput(self.device_id, request.round_id, self.task_id, int(y.size),
                                       self.spec.field_bits, pack(y, self.spec.field_bits), 10,
                                       unopened=s.unopened)
        if isinstance(request, UnmaskRequest):
            self.session, shares = sess.reveal(self.session, request.alive, request.dropped, request.model_sha256)
            size = value_bytes(self.session.packing)
            return "unmask", UnmaskResponse(self.device_id, request.round_id, self.task_id,
                                            b"".join(shares[o][1].to_bytes(size, "big") for o in sorted(shares)))
        return "other", None


def field_sum(vectors, field_bits: int) -> np.ndarray:
    """The oracle: the plain integer sum of the inputs, mod 2^m."""
    total = np.sum(np.stack([np.asarray(v, dtype=np.int64) for v in vectors]), axis=0)
    return (total % (1 << field_bits)).astype(np.uint32)
