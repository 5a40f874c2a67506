"""The leader of a sharded fleet ([coordinator] shards = K): the coordinator, minus ingest.

It runs rounds exactly as Coordinator does (selection, tasks, deadlines, declines, commit
with epoch fencing), with three differences:

* every task names the device's shard (config.shard_for), so the device uploads there;
* it validates no update: an Update on the plain update topic is refused (wrong_shard), and
  the round machine learns who reported from shard_updates (`poll_s`), as Replied events;
* the round's aggregator is ShardSums: at Aggregate it seals the round in the shard tables
  and merges the K partial sums in shard index order (sums.merge), so the committed mean is
  sum / weight over exactly the updates the workers counted, as MeanAggregator would give.
  Under central DP it is ShardDpSums (privacy.py: the merged clipped sum, noised once), and
  under a robust rule ShardReplay (replay.py: the stored updates fed to that rule). A secure
  round keeps the aggregator one machine builds: its shell (secure.py) unmasks per shard group.

The round record's `reports` is the number of updates in the model (the sealed count), which
can exceed the replies the machine saw: workers count concurrently between the last poll and
the seal.
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.protocol import Update

from ..aggregate import MeanAggregator
from ..dp.round import DpMean
from ..errors import WrongShard
from ..leadership import check_epoch
from ..rounds import Replied, on_event
from ..server import Coordinator
from .config import shard_for
from .privacy import ShardDpSums
from .replay import ShardReplay
from .secure import ShardedSecAggShell
from .sums import PartialSum, mean, merge
from .tables import ShardTables


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


class ShardedCoordinator(Coordinator):
    poll_s = 0.1  # seconds between reads of the shard tables' progress
    reports_from_aggregate = True  # the record counts what the workers counted up to the seal

    def __init__(self, transport, strategy, manifest, initial_shared, config, clock=None, store=None,
                 metrics=None):
        self.tables = ShardTables(config.state_dsn)
        epoch = getattr(store, "epoch", None)
        where = self.tables.where
        self._check = None if epoch is None else (lambda db: check_epoch(db, epoch, where))
        self._next_poll = 0.0
        super().__init__(transport, strategy, manifest, initial_shared, config, clock, store, metrics)
        self.outbound.shard_for = lambda device_id: shard_for(device_id, config.shards)
        if config.secure_aggregation.enabled:  # one SecAgg instance per shard group (secure.py)
            self.shell = ShardedSecAggShell(config, self.outbound, self.shapes)

    def _new_round(self, machine, tasks, started, plan=None):
        rnd = super()._new_round(machine, tasks, started, plan)
        rnd.aggregator = self._shard_aggregator(rnd.aggregator, machine.round_id)
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
                                           f"{shard_for(report.device_id, self.config.shards)}"), sender, report)
        return super()._report(report, sender, size)

    def tick(self):
        now = self.clock.now()
        if self.round is not None and now >= self._next_poll:
            self._next_poll = now + self.poll_s
            self._poll()
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
