"""Simulated attackers on the real device code (simulation only).

An attacking device is a DeviceRuntime that trains honestly on its (possibly poisoned) data;
then the update it keeps for upload is rewritten: its delta, decoded as the coordinator would
decode it, goes through the attack (adversary.malicious_delta) and is compressed again with the
task's settings; huge_weight changes the claimed example count, nan writes an all-NaN frame
(the honest encoder refuses NaN). The device's own state (residuals, optimizer) stays the
honest one. Colluding attacks (ALIE, IPM, min-max/min-sum) are rewritten later, when the
round's colluders have all trained: conspiracy.py.

The rewrite happens where the device hands the update over to be kept (the journal passed to
DeviceRuntime.handle_task: its `record` gets the rewritten update), so the agent publishes and
re-publishes the rewritten one, and the device's state commits with it as with an honest one.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from fedge.coordinator.robust.flat import flatten, unflatten
from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.compress import compress_update, decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_tensors

from . import attacks
from .adversary import UPDATE_ATTACKS, AttackSpec, claimed_examples, malicious_delta

F32_MAX = float(np.finfo(np.float32).max)


def _decoded(update: Update) -> dict[str, np.ndarray]:
    return decompress_update(decode_tensors(update.payload))


class _RewritingJournal:
    """The agent's DeviceJournal, except that `record` keeps the rewritten update."""

    def __init__(self, journal, rewrite):
        self._journal, self._rewrite = journal, rewrite

    def record(self, store, update: Update, saves, meta) -> None:
        self._journal.record(store, self._rewrite(update), saves, meta)

    def __getattr__(self, name):
        return getattr(self._journal, name)


class _Rewriting(DeviceRuntime):
    """Runs `_rewrite` once per update on what is kept for upload and on the reply."""

    def handle_task(self, task: TrainTask, deadline_check=None, journal=None):
        done: dict[str, Update] = {}

        def rewrite(update: Update) -> Update:
            if update.update_id not in done:
                done[update.update_id] = self._rewrite(update, task)
            return done[update.update_id]

        proxy = _RewritingJournal(journal, rewrite) if journal is not None else None
        reply = super().handle_task(task, deadline_check=deadline_check, journal=proxy)
        return rewrite(reply) if isinstance(reply, Update) else reply

    def _rewrite(self, update: Update, task: TrainTask) -> Update:
        raise NotImplementedError


def rewrite_update(update: Update, compression: CompressionSpec, spec: AttackSpec, collusion: attacks.Collusion,
                   n: int, eta: float) -> Update:
    """The update an attacker sends instead of its honest `update`, compressed like the task asked."""
    rng = np.random.default_rng([update.round_id, zlib.crc32(update.device_id.encode())])
    payload = update.payload
    if spec.name == "nan":
        payload = attacks.nan_frame({k: v.shape for k, v in _decoded(update).items()})
    elif spec.name in UPDATE_ATTACKS:
        honest = _decoded(update)
        mal = malicious_delta(spec, collusion, n, eta, flatten(honest), update.round_id, update.device_id, rng)
        # float32 carries the update: a larger scale once overflowed to Inf, which the encoder
        # refuses (a traceback); the attacker sends the largest values the update can hold instead
        mal = np.clip(mal, -F32_MAX, F32_MAX)
        spec_out = dataclasses.replace(compression, clip_norm=0.0, error_feedback=False)
        sent, _, _ = compress_update(unflatten(mal, honest), None, spec_out, rng)
        payload = encode_tensors(sent)
    return dataclasses.replace(update, payload=payload, num_examples=claimed_examples(spec, update.num_examples))


class MaliciousRuntime(_Rewriting):
    def __init__(self, *args, attack: AttackSpec, collusion: attacks.Collusion, n: int, eta: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.attack, self.collusion, self.n, self.eta = attack, collusion, n, eta

    def _rewrite(self, update: Update, task: TrainTask) -> Update:
        return rewrite_update(update, task.compression, self.attack, self.collusion, self.n, self.eta)
