"""What the server does for a secure round, in one place, so server.py keeps thin hooks:
open the round's protocol state, send each stage's requests, admit replies, and hand the
unmasked mean to the strategy."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math

from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.secagg.messages import MaskedInput, SecAggSpec, UnmaskResponse
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import Unexplained, UnmaskFailed

from ..config import CoordinatorConfig, task_seed
from ..errors import UpdateRejected
from ..outbound import Outbound
from ..records import OpenRound
from ..rounds import Declined, Replied, on_event, with_quorum
from ..strategies import AggregateInput
from .config import identities_of
from .private import private_spec
from .round_state import BAD_SIGNATURE, REPLY_OF, SecAggRound
from .stages import ADVERTISE, SECAGG, SHARE, UNMASK_STAGE, secagg_limits, unmask_threshold

log = logging.getLogger("fedge.coordinator")

REPLIES = tuple(REPLY_OF.values())


class SecAggRejected(UpdateRejected):
    key_changed = False  # a bad signature from a device a reload re-keyed since its round began (admit)

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


SHOWN_UNLISTED = 10  # ids named in selectable's line; the rest are counted
_READ = object()  # SecAggShell's identities: read the config's directory_file (the default)


class SecAggShell:
    secure = True

    def __init__(self, config: CoordinatorConfig, outbound: Outbound, shapes: dict[str, tuple[int, ...]], store,
                 identities=_READ):
        self.config = config
        self.store = store  # the coordinator's: a round whose unmasking began is charged at once (_release)
        self.sa = config.secure_aggregation
        self.outbound = outbound
        self.shapes = shapes
        # read at the leader's start (service.run_service read it first, so a bad file stopped it before
        # the lease), replaced whole at a SIGHUP reload (reload.py); None = unchecked
        self.identities = identities_of(self.sa) if identities is _READ else identities
        self.selected_with = self.identities  # the map the open round checks with (set again as each round opens)
        self.unlisted: set[str] = set()  # eligible devices the directory lacks, at the last selection
        self.said_unlisted: set[str] = set()  # the ones counted for the log already (selectable)
        self.states: dict[int, SecAggRound] = {}  # round id -> protocol state (memory only: see resume)
        # After aggregate_input, for the server to count: senders too few could open the shares
        # of (sidelined), and holders whose unmask answer was left out (named only).
        self.blamed: list[str] = []
        self.left_out: list[str] = []
        # fp32, dense, no error feedback: the shared quantization replaces the per-tensor one
        self.compression = CompressionSpec(clip_norm=config.compression.clip_norm, quant_bits=32,
                                           topk_fraction=1.0, error_feedback=False)

    def plan(self, wanted: int, quorum: int):
        """(stages, limits) for the round machine."""
        return SECAGG, secagg_limits(wanted, quorum, self.config.round_deadline_s, self.sa)

    def _state(self, rnd: OpenRound) -> SecAggRound:
        rid = rnd.ctx.round_id
        if rid not in self.states:
            self.states.clear()  # one open round at a time
            self.states[rid] = self._new_state(rnd)
            self.selected_with = self.identities  # the map the round checks with (a reload replaces, never edits)
        return self.states[rid]

    @property
    def dimension(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def _spec(self, rnd: OpenRound) -> SecAggSpec:
        """The round's shared encoding, before distributed DP's parameters."""
        clip = rnd.privacy.clip_norm if rnd.privacy is not None else self.config.compression.clip_norm  # the round's S
        return SecAggSpec(self.sa.bits, field_bits(self.sa.bits, len(rnd.machine.selected)),
                          self.sa.clip_for(clip, self.dimension),
                          self.graph_seed(rnd) + 1, self.sa.keep_fraction)

    def graph_seed(self, rnd: OpenRound) -> int:
        """The neighbour graph's seed (public); the rotation's is the next integer."""
        return task_seed(self.config.seed, rnd.ctx.round_id) * 2  # < 2**63: config.MAX_SEED

    def _new_state(self, rnd: OpenRound) -> SecAggRound:
        """The round's protocol state (sharding/secure.py builds one per shard group instead)."""
        spec = private_spec(self._spec(rnd), rnd.privacy, rnd.machine, self.dimension, self.sa.bits,
                            self.sa.corrupt)  # private.py
        return SecAggRound(rnd.ctx.round_id, spec, hashlib.sha256(rnd.params_bytes).hexdigest(),
                           self.graph_seed(rnd), self.shapes, self.sa.graph_for, self.identities)

    def send(self, rnd: OpenRound, stage: str, devices: tuple[str, ...], now: float) -> None:
        state = self._state(rnd)
        state.open_stage(stage, devices)
        if stage == SHARE:  # the cohort is known, and with it t: the unmask stage's threshold
            need = unmask_threshold(min(self.sa.unmask_min, len(state.cohort)), state.t)
            rnd.machine = with_quorum(rnd.machine, UNMASK_STAGE, need)
            log.info("round %d: cohort of %d, k=%d, t=%d; stage minimums: share %d, mask %d, unmask %d",
                     rnd.ctx.round_id, len(state.cohort), state.k, state.t, rnd.machine.limits[1].quorum,
                     rnd.machine.limits[2].quorum, need)
        remaining = rnd.machine.deadline - now
        for device_id in devices:
            task = None
            if stage == ADVERTISE:  # the only stage that trains: the TrainTask, its params inline
                task = dataclasses.replace(self.outbound.train_task(rnd, device_id, remaining, inline=True),
                                           compression=self._compression(rnd))
            request = state.request(stage, device_id, rnd.ctx.tasks[device_id], task)
            self.outbound.to_device(rnd, device_id, request)
        if stage == ADVERTISE:
            for device_id in devices:
                rnd.task_sent[device_id] = now

    def _compression(self, rnd: OpenRound) -> CompressionSpec:
        """The tasks' compression: under DP, the device clips to the round's S (adaptive clipping
        moves it from round to round), and reports the norm it saw before the clip."""
        if rnd.privacy is None:
            return self.compression
        return dataclasses.replace(self.compression, clip_norm=rnd.privacy.clip_norm)

    def owns(self, report, channel: str) -> bool:
        return channel == "update" and isinstance(report, REPLIES)

    def selectable(self, devices: list[str]) -> list[str]:
        """`devices` without those the identity directory lacks: selected, each would train in full
        and be refused (secagg_no_identity) every round, holding the advertise stage to its
        deadline. A selection that meets devices not met before logs one line with their number
        and up to SHOWN_UNLISTED of their ids (check-ins are hostile: a flood of new ids is one
        line a round); the gauge counts all at each selection. A device whose signature failed is
        not left out here but for a while, from 10 minutes doubling with each offence
        (coordinator/sidelined.py): its advertisement may verify once it is provisioned again."""
        if self.identities is None:
            return devices
        self.unlisted = {d for d in devices if d not in self.identities}
        new = sorted(self.unlisted - self.said_unlisted)
        if new:
            more = f" and {len(new) - SHOWN_UNLISTED} more" if len(new) > SHOWN_UNLISTED else ""
            log.warning("coordinator: %d eligible device(s) missing from the identity directory (%s): %s%s; left "
                        "out of every round until provisioned there and the coordinator reloads (SIGHUP) or "
                        "restarts", len(new), self.sa.directory_file, ", ".join(new[:SHOWN_UNLISTED]), more)
        self.said_unlisted = self.unlisted  # a device that leaves and comes back unlisted is named again
        self.outbound.metrics.unlisted.set(len(self.unlisted))
        return [d for d in devices if d in self.identities]

    def resend(self, rnd: OpenRound, device_id: str, now: float) -> None:
        """Nothing: a secure round's requests go out once per stage (a lost one is a dropout)."""

    def admit(self, rnd: OpenRound | None, reply, sender: str | None, size: int) -> SecAggRejected | None:
        """None when the reply counts for the round's current stage (the machine has counted
        it, as OpenRound.add counts an Update), else why not."""
        try:
            self._admit(rnd, reply, sender, size)
        except SecAggRejected as exc:
            if exc.reason == BAD_SIGNATURE:  # raised only for an expected device (_admit): the stage stops waiting
                # for it, as for one that declined; awaited to the stage's deadline, it held every other device
                # of the round that long (and the sideline's 600 s were nearly spent by the next selection).
                # Other refusals keep waiting: a replayed advertisement may be followed by the device's own.
                rnd.machine, _ = on_event(rnd.machine, Declined(reply.device_id, exc.reason))
                # re-keyed by a reload since the round began: signed with the new key, checked with the old
                exc.key_changed = self.identities.get(reply.device_id) != self.selected_with.get(reply.device_id)
            return exc
        rnd.machine, _ = on_event(rnd.machine, Replied(reply.device_id))  # a reply never closes a stage by itself
        if isinstance(reply, UnmaskResponse):
            rnd.unmasking = True  # before the write: if it fails, the close charges (records.OpenRound.charge)
            self._release(rnd)
        return None

    def _release(self, rnd: OpenRound) -> None:
        """Charge a private round at its first accepted unmask answer, in the store at once. From
        there the coordinator may compute the noised sum (from t answers; the round can still end
        without the server computing it, at a deadline with unmask_min above t, or another shard
        group short of t), and a secure round cannot be replayed after a restart: charged only at
        its close, a round killed between the unmask and the close was never charged. A round
        stopped before any unmask answer revealed nothing and stays free (records.OpenRound.charge)."""
        if rnd.privacy is not None and not rnd.charged:
            self.store.charge_round(rnd.ctx.round_id, rnd.privacy.to_json())
            rnd.charged = True

    def _admit(self, rnd: OpenRound | None, reply, sender: str | None, size: int) -> None:
        if rnd is None or reply.round_id != rnd.ctx.round_id:
            raise SecAggRejected("stale_round", f"{type(reply).__name__} for round {reply.round_id}")
        rnd.bytes_up += size
        # as dense fp32: a masked input's field elements would be 4 bytes a coordinate (the codec
        # holds its data to exactly ceil(length * field_bits / 8) bytes, so length is bounded)
        masked = isinstance(reply, MaskedInput)
        rnd.bytes_up_dense += size - len(reply.data) + 4 * reply.length if masked else size
        if sender != reply.device_id or rnd.ctx.tasks.get(sender) != reply.task_id:
            raise SecAggRejected("unexpected_message", f"{type(reply).__name__} from {sender}")
        if not rnd.machine.expects(sender):
            raise SecAggRejected("stale_round", f"{type(reply).__name__} from {sender}: not expected now")
        why = self._state(rnd).accept(rnd.machine.stages[rnd.machine.stage].name, reply)
        if why is not None:
            raise SecAggRejected(why, f"{type(reply).__name__} from {sender}")

    def aggregate_input(self, rnd: OpenRound, population: int) -> AggregateInput | str:
        """The survivors' mean delta; a string says why the round cannot be unmasked."""
        state = self._state(rnd)
        try:  # the state stays until the next round opens: a failed commit repeats Aggregate
            mean, n, count = state.mean_delta()
        except UnmaskFailed as exc:
            if isinstance(exc, Unexplained):  # no one named: colluders stalling rounds show here
                self.outbound.metrics.unmask_unnamed.inc()
            return f"secure aggregation could not unmask: {exc}"
        finally:
            self.blamed, state.blamed = sorted(state.blamed), set()
            self.left_out, state.left_out = sorted(state.left_out), set()
        self._release(rnd)  # charged at its first unmask answer already
        if count is not None:  # adaptive clipping: the devices noised the count inside the sum
            rnd.aggregator.release_count(count, n)  # the DpMean's carry() commits the next S with the model
        return AggregateInput(mean, n, population)
