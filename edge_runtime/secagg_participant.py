"""The device's side of secure-aggregation rounds: the four stages' requests in, replies out.

    SecAggTask     train (DeviceRuntime.handle_task), encode the delta on the round's shared
                   grid (kernel/secagg/quantize.py), start a session, advertise its keys
    KeyDirectory   rebuild the neighbour graph from the cohort itself, check the neighbours'
                   model hashes, send each neighbour its encrypted shares
    ShareDelivery  open the shares addressed to this device, send the masked input
    UnmaskRequest  reveal shares once, or decline by name (kernel/secagg/session.py)

What the coordinator could forge is checked here, not trusted: the graph comes from the
cohort and the round's seed, a threshold that would let the coordinator get both kinds of
share (t below graph.threshold_floor: k/2 + 1, and one more for a sparse graph's packed
shares) is refused, and the unmask checks live in `session.reveal`.

The task's compression is fp32 and dense with error feedback off (the coordinator's
secure-aggregation config sets it): the shared quantization below replaces the per-tensor one.
Shared parameters only: personal parameters never leave the device, in or out of SecAgg.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .device import DeviceRuntime
from .kernel.compress import decompress_update
from .kernel.device_folder import SECAGG_ANSWERED_DIR
from .kernel.errors import ArtifactError, CodecError, DeviceStateError, FedgeError, StateWriteError
from .kernel.files import atomic_write_bytes
from .kernel.protocol import Decline, TrainTask, Update
from .kernel.secagg import ddg, identity
from .kernel.secagg import session as sess
from .kernel.secagg.graph import neighbours_of, threshold_floor
from .kernel.secagg.masking import mask_input
from .kernel.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    KeyDirectory,
    MaskedInput,
    SecAggSpec,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from .kernel.secagg.packing import pack
from .kernel.secagg.shamir import value_bytes
from .kernel.secagg.shared_encoding import encode_update, subset_size
from .kernel.update_codec import decode_tensors
from .store import DeviceStore
from .work_limits import SECAGG_NEIGHBOURS

log = logging.getLogger("fedge.secagg")

REQUESTS = (SecAggTask, KeyDirectory, ShareDelivery, UnmaskRequest)
WEAK_THRESHOLD = "secagg_weak_threshold"  # t < graph.threshold_floor: the coordinator could collect both kinds
NO_SESSION = "secagg_no_session"  # a later stage for a round this device did not advertise in
FAILED = "secagg_failed"  # anything else the device could not do (the detail says what)
# The coordinator's name for a reply out of order (coordinator/secagg/round_state.py).
WRONG_STAGE = "secagg_wrong_stage"  # shares before this device sent its own, unmask before its masked input
TOO_MANY_NEIGHBOURS = "secagg_too_many_neighbours"  # more than work_limits.SECAGG_NEIGHBOURS: unbounded work
# Less of the device's own noise than its floor (own_noise_multiplier): a plain task, central DP
# or secure aggregation without DP (none), or distributed DP announcing a smaller σγ/S.
NOISE_BELOW_FLOOR = "dp_noise_below_floor"  # less of its own noise than the device's floor


def own_noise_multiplier(spec: SecAggSpec | None, dimension: int | None = None) -> float:
    """The noise this device adds itself to what it sends, per unit of that vector's L2 bound:
    sigma / sqrt(Delta_2^2 + kappa^2 / 4) in the integer domain (ddg.py: the update clipped to S,
    scaled by 1/gamma and rounded, Delta_2 = ddg.rounded_bound over the `dimension` shared
    coordinates' subset; the count coordinate's kappa / 2). Without `dimension`, the upper bound
    sigma gamma / S (Delta_2 >= S / gamma), which needs no model. 0 for a task that adds no noise on
    the device (spec None: a plain task, or central DP)."""
    if spec is None or not spec.distributed_dp:
        return 0.0
    if dimension is None:
        return spec.dp_sigma * spec.dp_gamma / spec.dp_clip_norm
    rounded = ddg.rounded_bound(spec.dp_clip_norm / spec.dp_gamma, subset_size(dimension, spec))
    return spec.dp_sigma / math.sqrt(rounded ** 2 + (spec.dp_count_scale / 2) ** 2)


def check_noise_floor(spec: SecAggSpec | None, floor: float, dimension: int | None = None) -> None:
    """SecAggDecline(NOISE_BELOW_FLOOR) unless the task adds at least `floor` of own noise (0 = off):
    own_noise_multiplier with the model's `dimension` (or, before training, its upper bound).
    Why the device checks: a coordinator that runs the protocol but announces too little noise,
    or none, would otherwise get this device's update with less; with the floor, whatever the
    coordinator and every other device do, what this device sends is a Gaussian mechanism of
    multiplier >= floor."""
    got = own_noise_multiplier(spec, dimension)
    if floor > 0 and not got >= floor:
        raise sess.SecAggDecline(NOISE_BELOW_FLOOR, f"own noise multiplier {got:.4g}; this device's floor is {floor:g}")


def flatten(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """Shared params in name order: the coordinator unflattens with the manifest's shapes."""
    return np.concatenate([np.asarray(tensors[k], dtype=np.float64).reshape(-1) for k in sorted(tensors)])


def _shapes(tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def unflatten(flat: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for k in sorted(like):
        out[k] = flat[at:at + like[k].size].reshape(like[k].shape).astype(np.float32)
        at += like[k].size
    return out


class SecAggParticipant:
    def __init__(self, runtime: DeviceRuntime, publish: Callable[[object], None],
                 rng: np.random.Generator | None = None, identity_private: bytes | None = None,
                 directory: Mapping[str, bytes] | None = None, own_noise_floor: float = 0.0,
                 stop_check: Callable[[TrainTask], Callable[[], str | None]] | None = None):
        """identity_private: this device's Ed25519 key (signs its advertisements); directory:
        the fleet's identity public keys, from provisioning (with it, unsigned or wrongly
        signed neighbour keys are declined as secagg_bad_signature); own_noise_floor: the least
        σγ/S of distributed DP this device accepts (check_noise_floor; 0 = off); stop_check: for a
        task, what training asks between steps (its deadline less the upload margin, and the device's
        time cap: secagg_intake.py)."""
        self.runtime = runtime
        self.own_noise_floor = own_noise_floor
        self.stop_check = stop_check or (lambda task: None)
        self.identity_private = identity_private
        self.directory = directory
        self.publish = publish  # sends one message on this device's update channel
        self.rng = rng or np.random.default_rng()
        # One file per answered unmask request, written (fsync, rename) before the answer leaves.
        self.answered_dir = Path(runtime.state_root) / runtime.device_id / SECAGG_ANSWERED_DIR
        self.sessions: dict[str, sess.DeviceSession] = {}  # task_id -> session (one round, one task)
        self.sent_shares: dict[str, EncryptedShares] = {}  # task_id -> its one set of boxes, resent on a repeat
        self.sent_masked: dict[str, MaskedInput] = {}  # task_id -> its one masked input, resent on a repeat
        self.inputs: dict[str, tuple[np.ndarray, int, SecAggSpec]] = {}  # task_id -> (encoded values, examples, spec)

    @property
    def device_id(self) -> str:
        return self.runtime.device_id

    def on_message(self, message) -> None:
        task_id = message.task.task_id if isinstance(message, SecAggTask) else message.task_id
        round_id = message.task.round_id if isinstance(message, SecAggTask) else message.round_id
        try:
            if isinstance(message, SecAggTask):
                self._train(message)
            elif task_id not in self.sessions:
                raise sess.SecAggDecline(NO_SESSION)
            elif isinstance(message, KeyDirectory):
                self._share(message)
            elif isinstance(message, ShareDelivery):
                self._mask(message)
            elif isinstance(message, UnmaskRequest):
                self._reveal(message)
        except sess.SecAggDecline as exc:
            log.warning("device %s: round %d: secagg %s declined: %s", self.device_id, round_id,
                        type(message).__name__, exc)
            self.publish(Decline(self.device_id, round_id, task_id, exc.reason, exc.detail, "during"))
        # A delta that cannot be encoded (NaN), a malformed key, a spec whose numbers overflow
        # (dp_gamma 1e-300 made (S / gamma)**2 raise OverflowError out of the device's poll), a
        # state it cannot write: declined, by name. Any other error is a bug, logged in full; the
        # stage is answered all the same rather than left to its deadline.
        except Exception as exc:  # noqa: BLE001
            expected = isinstance(exc, (ValueError, ArithmeticError, FedgeError, OSError))
            (log.warning if expected else log.exception)("device %s: round %d: secagg %s failed: %s: %s",
                                                         self.device_id, round_id, type(message).__name__,
                                                         type(exc).__name__, exc)
            self.publish(Decline(self.device_id, round_id, task_id, _failure_reason(exc), str(exc)[:300], "during"))

    def _train(self, message: SecAggTask) -> None:
        task: TrainTask = message.task
        if task.task_id in self.sessions:  # a redelivered task: advertise the same keys again
            self.publish(self._advertisement(self.sessions[task.task_id], task.task_id))
            return
        check_noise_floor(message.spec, self.own_noise_floor)  # the upper bound, before any training
        try:
            store = self._store(task.model_id)
            residual = store.load_residual()  # before handle_task: it keeps its own (fp32, empty) residual there
        except (DeviceStateError, StateWriteError):  # escaped the poll, the task unanswered: handle_task
            store = residual = None  # meets it too, and declines the task saying why (bad_state parks it)
        reply = self.runtime.handle_task(task, self.stop_check(task))
        if isinstance(reply, Decline):
            self.publish(reply)
            return
        assert isinstance(reply, Update)
        if store is None:  # its state came right during the task: its residual was not read
            raise sess.SecAggDecline(FAILED, "the device's state could not be read before the task")
        tensors = decompress_update(decode_tensors(reply.payload))
        spec = message.spec
        check_noise_floor(spec, self.own_noise_floor, sum(v.size for v in tensors.values()))  # before anything leaves
        if residual is not None and _shapes(residual) != _shapes(tensors):
            residual = None  # another model's, or none yet
        norm = reply.metrics.get("norm")  # before the task's clip to S: adaptive clipping's bit compares it
        if spec.dp_count_scale and not isinstance(norm, float):  # after a clip it would always say "within"
            raise sess.SecAggDecline(FAILED, "adaptive clipping needs the norm before the task's clip; the task "
                                             "did not clip")
        values, left = encode_update(flatten(tensors), None if residual is None else flatten(residual), spec,
                                     self.rng, norm)
        with self.runtime._busy:  # one writer of state.npz at a time: an evaluation may rewrite it (a refit head)
            store.save_residual(unflatten(left, tensors))  # what the sum will not get from this device, kept
        self.sessions.clear()  # one secure round at a time: an older round's keys and input go
        self.sent_shares.clear()
        self.sent_masked.clear()
        prune_answered(self.answered_dir, KEEP_ANSWERED)
        self.inputs = {task.task_id: (values, reply.num_examples, spec)}
        s = sess.start(self.device_id, task.round_id, hashlib.sha256(task.params).hexdigest())
        self.sessions[task.task_id] = s
        self.publish(self._advertisement(s, task.task_id))
        # a plain task's line says the same (agent.py); without it a secure fleet's devices logged nothing per round
        log.info("device %s: round %d task %s: %d steps, loss %.4g; secure aggregation: keys advertised",
                 self.device_id, task.round_id, task.task_id, reply.metrics.get("steps", 0),
                 reply.metrics.get("loss", float("nan")))

    def _store(self, model_id: str) -> DeviceStore:
        try:  # keyed: a residual written for other contents of this model id is set aside, not added
            return self.runtime.store(self.runtime.model(model_id))
        except ArtifactError:  # no such model (or unusable): handle_task declines the task, saying why
            return DeviceStore(Path(self.runtime.state_root) / self.device_id, model_id)

    def _advertisement(self, s: sess.DeviceSession, task_id: str) -> KeyAdvertisement:
        signature = b""
        if self.identity_private is not None:
            signature = identity.sign(self.identity_private, identity.transcript(
                s.round_id, self.device_id, s.cipher.public, s.mask.public, s.model_sha256))
        return KeyAdvertisement(self.device_id, s.round_id, task_id, s.cipher.public, s.mask.public, s.model_sha256,
                                signature)

    def _share(self, message: KeyDirectory) -> None:
        if message.task_id in self.sent_shares:  # a repeated directory: the same boxes (never encrypt twice)
            self.publish(self.sent_shares[message.task_id])
            return
        s = self.sessions[message.task_id]
        cohort = tuple(sorted(set(message.cohort)))
        if self.device_id not in cohort:
            raise sess.SecAggDecline(sess.NOT_IN_COHORT, "the directory's cohort does not list this device")
        k = min(message.neighbours, len(cohort) - 1)
        if message.threshold < threshold_floor(k, len(cohort)):  # packed shares need one more than k/2 + 1
            raise sess.SecAggDecline(WEAK_THRESHOLD, f"t = {message.threshold} for k = {k} of {len(cohort)}")
        if k > SECAGG_NEIGHBOURS:
            raise sess.SecAggDecline(TOO_MANY_NEIGHBOURS, f"k = {k} of {len(cohort)}; this device shares with at "
                                                          f"most {SECAGG_NEIGHBOURS}")
        mine = neighbours_of(cohort, k, message.graph_seed, self.device_id)
        wanted = set(mine)
        advertised = {p.device_id: sess.Advertised(p.cipher_public, p.mask_public, p.model_sha256, p.signature)
                      for p in message.keys if p.device_id in wanted}
        s, sealed = sess.shares_for_neighbours(s, cohort, mine, message.threshold, advertised, self.directory)
        self.sessions[message.task_id] = s
        reply = EncryptedShares(self.device_id, message.round_id, message.task_id,
                                b"".join(sealed[peer] for peer in sorted(sealed)))
        self.sent_shares[message.task_id] = reply
        self.publish(reply)

    def _mask(self, message: ShareDelivery) -> None:
        if message.task_id in self.sent_masked:  # a repeated delivery: the same input (never mask twice)
            self.publish(self.sent_masked[message.task_id])
            return
        if message.task_id not in self.sent_shares:
            raise sess.SecAggDecline(WRONG_STAGE, "shares delivered before this device shared its own")
        s = sess.receive_shares(self.sessions[message.task_id], {sh.peer: sh.ciphertext for sh in message.shares})
        sess.check_masking_peers(s)  # fewer than t: the input would be hidden by its self mask alone
        self.sessions[message.task_id] = s
        values, examples, spec = self.inputs[message.task_id]
        peers = sess.masking_peers(s)
        y = mask_input(values, self.device_id, s.self_seed, s.mask.private, peers, s.round_id, spec.field_bits)
        reply = MaskedInput(self.device_id, message.round_id, message.task_id, int(y.size), spec.field_bits,
                            pack(y, spec.field_bits), examples, unopened=s.unopened)
        self.sent_masked[message.task_id] = reply
        self.publish(reply)
        log.info("device %s: round %d: masked input sent (%d bytes, %d neighbours' masks)", self.device_id,
                 message.round_id, len(reply.data), len(peers))

    def _reveal(self, message: UnmaskRequest) -> None:
        # Keyed by the task (its session's keys), not the round number alone: a coordinator that
        # starts over on a new state database counts rounds from 1 again, and a record of round 1
        # of the old one once declined every new round 1..N at the last stage, after training.
        task_key = hashlib.sha256(message.task_id.encode()).hexdigest()[:32]
        record = self.answered_dir / f"round-{message.round_id}-{task_key}"
        if record.exists():  # answered before, perhaps by this device before a restart
            raise sess.SecAggDecline(sess.ALREADY_ANSWERED)
        if message.task_id not in self.sent_masked:  # nothing of this device is in the sum to unmask
            raise sess.SecAggDecline(WRONG_STAGE, "an unmask request before this device sent its masked input")
        s, shares = sess.reveal(self.sessions[message.task_id], message.alive, message.dropped, message.model_sha256)
        self.sessions[message.task_id] = s  # a second request is declined, from memory and from the record
        atomic_write_bytes(record, message.task_id.encode())
        size = value_bytes(s.packing)
        values = b"".join(shares[owner][1].to_bytes(size, "big") for owner in sorted(shares))
        self.publish(UnmaskResponse(self.device_id, message.round_id, message.task_id, values))


def _failure_reason(exc: Exception) -> str:
    """The Decline reason of a stage that raised: a fedge error's own (a state that cannot be
    written is state_unwritable, as for a plain task), an OSError as state_unwritable (the
    unmask record, the residual), anything else FAILED. Only some types were turned into
    declines: a StateWriteError or an OSError escaped the device's poll, and the stage went
    unanswered until its deadline."""
    if isinstance(exc, CodecError):
        return FAILED  # a field of the request the device cannot use (the detail says which)
    if isinstance(exc, FedgeError):
        return exc.reason
    return StateWriteError.reason if isinstance(exc, OSError) else FAILED


KEEP_ANSWERED = 16  # records of answered unmask requests kept (one file each; see prune_answered)
_ANSWERED_NAME = re.compile(r"round-\d+-[0-9a-f]{32}")


def prune_answered(folder: Path, keep: int) -> None:
    """Remove all but the `keep` newest answered-unmask records in `folder`. A device once kept
    one file per secure round for ever. A record guards only a task whose session this process
    still holds (a request for any other task is declined as NO_SESSION before the record is
    read), and a new secure task clears the sessions, so older records protect nothing; the
    newest are kept anyway. Only names this module writes are touched."""
    try:
        records = [p for p in folder.iterdir() if _ANSWERED_NAME.fullmatch(p.name) and p.is_file()
                   and not p.is_symlink()]
    except OSError:
        return  # no folder yet (no secure round answered), or unreadable: nothing to prune
    records.sort(key=lambda p: p.stat().st_mtime_ns)
    for stale in records[:max(0, len(records) - keep)]:
        try:
            stale.unlink()
        except OSError as exc:  # best effort: a record left behind costs a few bytes
            log.warning("device: cannot remove the old secure-aggregation record %s: %s", stale, exc)
