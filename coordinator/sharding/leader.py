"""The leader of a sharded fleet ([coordinator] shards = K): the coordinator, minus ingest.

It runs rounds exactly as Coordinator does (selection, tasks, deadlines, declines, commit
with epoch fencing), with these differences:

* it assigns each selected device a shard (assign.py: home shard if live, else the least-loaded
  live one; liveness = the shard's lease lock is held, lease.live_shards), stores the
  assignment with the round's opening (one transaction: pg_store.py), and every task names
  the device's shard, so the device uploads there. No live shard: the round does not begin
  (no_live_shard, logged and counted in fedge_rounds_not_begun_total{reason});
* mid-round, a shard that holds devices of the round and has had no live worker for
  shard_takeover_s (no spare took its lease) loses its uncounted devices to live shards
  (tables.reassign, fenced by the leader epoch), and each moved device the round still expects
  gets its task again naming the new shard (not one that declined: its worker would refuse the
  update): it sends the same update there (edge_runtime/uplink.py: retarget).
  Counted in fedge_shard_moves_total; fedge_shards_live is the last liveness read;
* it validates no update: an Update on the plain update topic is refused (wrong_shard), and
  the round machine learns who reported from shard_updates (`poll_s`), as Replied events;
* the round's aggregator is ShardSums: at Aggregate it seals the round in the shard tables
  and merges the K partial sums in shard index order (sums.merge), so the committed mean is
  sum / weight over exactly the updates the workers counted, as MeanAggregator would give.
  Under central DP it is ShardDpSums (privacy.py: the merged clipped sum, noised once), and
  under a robust rule ShardReplay (replay.py: the stored updates fed to that rule). A secure
  round keeps the aggregator one machine builds: its shell (secure.py) unmasks per shard group.
  The workers take no part in a secure round, so its liveness is not read: every device keeps
  its home shard, which its shard group (groups.py) follows.

The round record's `reports` is the number of updates in the model (the sealed count), which
can exceed the replies the machine saw: workers count concurrently between the last poll and
the seal.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from fedge.edge_runtime.kernel.protocol import Update

from ..aggregate import MeanAggregator
from ..dp.round import DpMean
from ..errors import WrongShard
from ..leadership import check_epoch
from ..rounds import Replied, on_event
from ..server import Coordinator
from .assign import assign
from .config import shard_for
from .privacy import ShardDpSums
from .replay import ShardReplay
from .secure import ShardedSecAggShell
from .sums import PartialSum, mean, merge
from .tables import ShardTables

log = logging.getLogger("fedge.coordinator")


class ShardSums:
    """The Aggregator of a sharded round: what the workers summed, read once at result()."""

    def __init__(self, tables: ShardTables, round_id: int, shards: int, shapes, check):
        self.tables, self.round_id, self.shards, self.shapes, self.check = tables, round_id, shards, shapes, check
        self.total: PartialSum | None = None

    @property
    def count(self) -> int:
        return 0 if self.total is None else self.total.count

    def add(self, delta, meta) -> None:
        raise TypeError("a sharded round's updates are added by its workers, not the leader")

    def result(self):
        if self.total is None:
            self.total = merge(self.tables.seal(self.round_id, self.shards, self.shapes, self.check))
        return mean(self.total)


class ShardMetrics:
    """The leader's view of its shards, on the coordinator's registry."""

    def __init__(self, registry):
        self.live = Gauge("fedge_shards_live", "Shards whose lease a worker holds, at the leader's last read",
                          registry=registry)
        self.moves = Counter("fedge_shard_moves", "Devices moved mid-round off a shard without a live worker",
                             registry=registry)
        self.not_begun = Counter("fedge_rounds_not_begun", "Rounds the sharded leader did not begin, by reason",
                                 ["reason"], registry=registry)
        self.not_begun.labels("no_live_shard")


class ShardedCoordinator(Coordinator):
    poll_s = 0.1  # seconds between reads of the shard tables' progress
    # seconds between mid-round reads of which shards are live (pg_locks): the takeover grace is
    # seconds long (shard_takeover_s), so reading it at poll_s would only add queries to the loop
    live_read_s = 1.0
    reports_from_aggregate = True  # the record counts what the workers counted up to the seal

    def __init__(self, transport, strategy, manifest, initial_shared, config, clock=None, store=None,
                 metrics=None):
        self.tables = ShardTables(config.state_dsn)
        epoch = getattr(store, "epoch", None)
        where = self.tables.where
        self._check = None if epoch is None else (lambda db: check_epoch(db, epoch, where))
        self._next_poll = 0.0
        self.assignment: dict[str, int] = {}  # the open round's stored device -> shard
        self._live: frozenset[int] = frozenset()  # at the last liveness read
        self._dead_since: dict[int, float] = {}  # shard of the open round -> clock time first seen without worker
        self._next_live_read = 0.0
        super().__init__(transport, strategy, manifest, initial_shared, config, clock, store, metrics)
        self.shard_metrics = ShardMetrics(self.metrics.registry)
        self.outbound.shard_for = self.shard_of
        if config.secure_aggregation.enabled:  # one SecAgg instance per shard group (secure.py)
            self.shell = ShardedSecAggShell(config, self.outbound, self.shapes, self.store,
                                            identities=self.shell.identities)  # read once, by the first shell

    def shard_of(self, device_id: str) -> int:
        """The device's shard in the open round (its home shard where none is stored)."""
        return self.assignment.get(device_id, shard_for(device_id, self.config.shards))

    def begin_round(self) -> bool:
        """Coordinator.begin_round, unless no shard has a live worker (no_live_shard)."""
        if self.round is None and not self.config.secure_aggregation.enabled:
            self._read_live()
            if not self._live:
                self.shard_metrics.not_begun.labels("no_live_shard").inc()
                self._flood(logging.WARNING, "no_live_shard", "round %d not begun: no_live_shard: none of the %d "
                            "shards has a live worker", self.next_round_id, self.config.shards)
                return False
        return super().begin_round()

    def _round_shards(self, selected):
        if self.config.secure_aggregation.enabled:  # no worker counts a secure round: home shards
            return {d: shard_for(d, self.config.shards) for d in selected}
        return assign(selected, self.config.shards, self._live)

    def _read_live(self) -> None:
        self._live = self.tables.live_shards(self.config.shards)
        self.shard_metrics.live.set(len(self._live))

    def _new_round(self, machine, tasks, started, plan=None):
        rnd = super()._new_round(machine, tasks, started, plan)
        rnd.aggregator = self._shard_aggregator(rnd.aggregator, machine.round_id)
        self.assignment = self.tables.assignment(machine.round_id)  # just written, or the resumed round's
        self._dead_since = {}
        return rnd

    def _shard_aggregator(self, inner, round_id: int):
        """What reads the round's counted updates at Aggregate, by the aggregator one machine built:
        the plain mean merges the sums; DP noises the merged clipped sum (privacy.py); any other
        rule replays the stored updates into `inner` (replay.py)."""
        if self.config.secure_aggregation.enabled:  # the shell unmasks per group (secure.py): no worker sums
            return inner
        where = (self.tables, round_id, self.config.shards, self.shapes, self._check)
        if isinstance(inner, MeanAggregator):
            return ShardSums(*where)
        if isinstance(inner, DpMean):
            return ShardDpSums(inner, *where)
        return ShardReplay(inner, *where)

    def _report(self, report, sender, size):
        if isinstance(report, Update):  # a device that ignored its task's shard, or an old build
            return self._reject(WrongShard(f"{sender}: sharded fleet, upload to shard "
                                           f"{self.shard_of(report.device_id)}"), sender, report)
        # A decline after an update a worker counted is refused, as on one machine (the machine
        # hears of the count at the next poll): read the counts first, once per device and round.
        rnd = self.round
        if rnd is not None and sender == report.device_id and rnd.ctx.tasks.get(sender) == report.task_id \
                and rnd.machine.expects(sender):
            self._poll()
        return super()._report(report, sender, size)

    def tick(self):
        now = self.clock.now()
        if self.round is not None and now >= self._next_poll:
            self._next_poll = now + self.poll_s
            self._poll()
            if not self.config.secure_aggregation.enabled:
                self._watch_shards(now)
        return super().tick()

    def _close(self, record):
        out = super()._close(record)
        keep = getattr(self.store, "keep_key_rounds", 100)  # as the store keeps its own update keys
        self.tables.prune(record.round_id - keep, self._check)
        return out

    def _poll(self) -> None:
        """Replied for each device the workers counted that the machine still expects; never in a
        secure round, whose replies are the SecAgg messages the leader admits itself (a plain
        Update counted for a device would make it 'alive' without a masked input)."""
        if self.shell.secure:
            return
        rnd = self.round
        for device_id in sorted(self.tables.reporters(rnd.ctx.round_id)):
            if rnd.machine.expects(device_id):
                rnd.machine, _ = on_event(rnd.machine, Replied(device_id))  # Tick acts on a full round
                self.metrics.accepted.inc()

    def _watch_shards(self, now: float) -> None:
        """Move the uncounted devices of shards without a live worker for shard_takeover_s
        (module docstring), and send each still expected its task again, naming its new shard."""
        rnd = self.round
        if now >= self._next_live_read:
            self._next_live_read = now + self.live_read_s
            self._read_live()
        for shard in set(self.assignment.values()):
            if shard in self._live:
                self._dead_since.pop(shard, None)
            else:
                self._dead_since.setdefault(shard, now)
        due = {k for k, since in self._dead_since.items() if now - since >= self.config.shard_takeover_s}
        waiting = [d for d, k in self.assignment.items() if k in due and rnd.machine.expects(d)]
        if not waiting or not self._live:
            return
        moves = self.tables.reassign(rnd.ctx.round_id, due, self._live, self._check)
        if not moves:
            return
        self.assignment.update(moves)
        self.shard_metrics.moves.inc(len(moves))
        log.warning("round %d: shard(s) %s without a live worker for %.1f s: %d device(s) moved to shard(s) %s",
                    rnd.ctx.round_id, sorted(due), self.config.shard_takeover_s, len(moves),
                    sorted(set(moves.values())))
        for device_id in sorted(moves):
            if not rnd.machine.expects(device_id):  # it declined: its worker would refuse the update
                continue
            rnd.task_sent.pop(device_id, None)  # at once, not after task_resend_s
            self.shell.resend(rnd, device_id, now)
