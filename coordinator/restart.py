"""Restart: the coordinator's state from its Store, and the open round rebuilt by replay.

The round's machine comes back with its deadline carried over in wall time; then every
stored event is replayed in acceptance order through the same paths the live round used
(admission's decoder, OpenRound.add, the machine's Declined event), so the aggregator is
bit-identical to the one the stopped process held.

A config changed between the two processes: what the round stored keeps it (its selection,
target, quorum, deadline, privacy plan; an async buffer its K), the rest is the new config's
(aggregator, weights, validation bounds). Refused at start by name where the round's updates
would be out of reach (another ingest path: check_ingest; another mode) or its privacy plan no
longer fits the budget (dp/budget.py, check_open). Abandoned at start, nothing of it released: a
secure round (server.py), and a round or async buffer opened with privacy off when privacy is on
now (abandon_unplanned; on either ingest path, as none of its updates is read).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError

from .admission import replayed
from .dp.round import RoundPlan
from .errors import StoreCorrupt
from .records import OpenRound, RoundRecord
from .robust.aggregators import EXTRA_KEY
from .rounds import Declined, RoundMachine, on_event, sync_round
from .store import Store, StoredDecline, StoredRound, StoredUpdate
from .strategies import ServerState

log = logging.getLogger("fedge.coordinator")


def restore_state(store: Store, model_id: str, strategy: str, initial: ServerState,
                  shapes: dict[str, tuple[int, ...]]) -> ServerState:
    """The stored model and strategy state; a fresh store is seeded with `initial`."""
    store.bind(model_id, strategy)
    loaded = store.load_state()
    if loaded is None:
        store.save_initial_state(initial)
        return initial
    got = {k: tuple(v.shape) for k, v in loaded.params.items()}
    if got != shapes:
        raise ConfigError(f"{store.path}: stored params {got} do not fit the model's shared params {shapes}")
    check_arrays(store.path, loaded, initial)
    check_robust(store.path, loaded, sum(int(np.prod(shape)) for shape in shapes.values()))
    return loaded


def check_arrays(path: object, loaded: ServerState, initial: ServerState) -> None:
    """StoreCorrupt unless the stored params are finite floats and each array of the strategy's
    state (initial.extra: momentum, Adam moments, SCAFFOLD's c, one per param) is still there
    with its dtype and shape, and finite: fedge commits nothing else (admission refuses NaN),
    and a damaged one would stop the loop at the next commit, or its NaN be taken as the state."""
    arrays = [("params", name, value, None) for name, value in loaded.params.items()]
    arrays += [(f"extra {group}", name, loaded.extra.get(group, {}).get(name), like)
               for group, names in initial.extra.items() for name, like in names.items()]
    for what, name, value, like in arrays:
        if value is None:
            why = "is missing"
        elif like is not None and (value.dtype, value.shape) != (like.dtype, like.shape):
            why = f"is {value.dtype} {value.shape}, not {like.dtype} {like.shape}"
        elif not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
            why = "holds NaN or Inf" if value.dtype.kind == "f" else f"is {value.dtype}, not floats"
        else:
            continue
        raise _corrupt(path, loaded.version, what, name, why)


def check_robust(path: object, loaded: ServerState, size: int) -> None:
    """StoreCorrupt unless the robust rules' state (extra group EXTRA_KEY, RobustState.to_extra)
    is what a commit writes: norms (and claims) flat float64, finite, norms >= 0 and claims > 0;
    center, if any, the (size,) finite float64 aggregate of the shared params. Read back as it
    is, a NaN or negative norm would move the norm bound, and a wrong center be dropped
    (_fit) or spread NaN, with no word said. size: the shared params' element count."""
    group = loaded.extra.get(EXTRA_KEY)
    if group is None:  # no robust rule has committed a round
        return
    for name in sorted(set(group) - {"norms", "claims", "center"}):
        raise _corrupt(path, loaded.version, f"extra {EXTRA_KEY}", name, "is no part of a robust rule's state")
    for name, value in sorted(group.items()):
        shape = (size,) if name == "center" else None
        if value.dtype != np.float64 or value.ndim != 1 or shape not in (None, value.shape):
            why = f"is {value.dtype} {value.shape}, not float64 {shape or '(n,)'}"
        elif not np.isfinite(value).all():
            why = "holds NaN or Inf"
        elif name == "norms" and (value < 0).any():
            why = "holds a negative norm"
        elif name == "claims" and (value <= 0).any():
            why = "holds a claim <= 0 (a weight is > 0)"
        else:
            continue
        raise _corrupt(path, loaded.version, f"extra {EXTRA_KEY}", name, why)
    if "norms" not in group:
        raise _corrupt(path, loaded.version, f"extra {EXTRA_KEY}", "norms", "is missing")


def _corrupt(path: object, version: int, what: str, name: str, why: str) -> StoreCorrupt:
    return StoreCorrupt(f"{path}: tensors of version {version}: {what} {name!r} {why}: the state db was changed "
                        "outside fedge; restore it from a backup")


def resume(stored: StoredRound, version: int, now: float, wall: float,
           make_round: Callable[[RoundMachine, dict[str, str], float, RoundPlan | None], OpenRound],
           path: object = "", shards: int = 0) -> OpenRound:
    """Rebuild an open round from the store (see the module docstring); shards: this process's
    [coordinator] shards (0: it ingests updates itself)."""
    if not stored.selected:  # async mode's open buffer selects no one (coordinator/async_mode)
        raise ConfigError(f"{path}: round {stored.round_id} is an open async buffer; finish it with "
                          "mode = 'async' before switching to sync")
    check_ingest(stored, shards, path)
    if stored.model_version != version:
        raise ConfigError(f"{path}: open round {stored.round_id} was based on version "
                          f"{stored.model_version}, the stored model is {version}")
    # Never more time left than the round had when it began, nor a start in the future: a wall clock
    # stepped back while we were down (a board with no real-time clock, restarted before NTP) once
    # added the whole step to the round, which then waited that long for a quorum that did not come.
    window = stored.deadline_wall - stored.started_wall
    machine = sync_round(stored.round_id, stored.selected, stored.target, stored.quorum,
                         now + min(stored.deadline_wall - wall, window))
    # a DP round comes back with its stored plan: the same z, S and W, so the same noise
    rnd = make_round(machine, stored.tasks, now - max(0.0, wall - stored.started_wall),
                     RoundPlan.from_json(stored.privacy))
    for event in stored.events:
        if isinstance(event, StoredUpdate):
            rnd.add(replayed(event, rnd.ctx))
        else:
            rnd.decline_from.add(event.device_id)
            rnd.machine, _ = on_event(rnd.machine, Declined(event.device_id, event.reason))  # paced before the stop
        rnd.events = event.seq + 1
    m = rnd.machine
    log.info("round %d resumed: %d reports, %d declines, %.0f s left", stored.round_id, len(m.reported),
             len(m.declined), m.deadline - now)
    return rnd


# The abandoned record's why (and the log's): a round opened with privacy off, privacy on at the restart.
PRIVACY_TURNED_ON = "opened with privacy off, and privacy is on now: abandoned at the restart"


def abandon_unplanned(c, stored: StoredRound, journal=None) -> bool:
    """The start's check of the open round's privacy plan (check_open: ConfigError where it no
    longer fits the budget), then True where the round was opened with privacy off and privacy is
    on now: it is abandoned here, unread. Resumed, it would take updates from devices the
    coordinator now treats as under privacy and release their mean unclipped, unnoised and
    uncharged; finished with privacy off first (the old advice), it released one more non-private
    model. Abandoned, nothing of it is applied or charged (it has no plan), its stored updates'
    payloads are deleted in the closing transaction (an async buffer's, `journal`'s, right after;
    a sharded round's shard_updates and shard_sums rows too, counted under the seal before),
    the rounds table and fedge_rounds_total{outcome="abandoned"} record it, and the loop's next
    begin_round opens a round under the privacy plan. `c`: the Coordinator starting."""
    c.privacy.check_open(stored)
    if not c.privacy.enabled or RoundPlan.from_json(stored.privacy) is not None:
        return False
    shard_rows = None
    if journal is None:  # a sync coordinator: an async buffer (no one selected) is resume's to refuse
        if not stored.selected:
            return False
        # No check_ingest: a round abandoned unread needs none of its updates in reach, and its
        # refusal's way out (finish the round with the old shards) released it without privacy.
        # Its updates are where it was opened: the store's rows, or the workers' (shard_updates).
        held = sum(isinstance(e, StoredUpdate) for e in stored.events)
        if stored.shards:
            shard_rows = _ShardRows(c, stored.round_id)
            held += shard_rows.seal_counted()
    else:
        held = len(journal.buffered(stored.round_id))
    wall = c.clock.wall()
    declines = {e.device_id: e.reason for e in stored.events if isinstance(e, StoredDecline)}
    record = RoundRecord(round_id=stored.round_id, committed=False, why=PRIVACY_TURNED_ON,
                         selected=len(stored.selected), reports=held, declines=declines, bytes_up=0,
                         bytes_up_dense=0, bytes_down=0, seconds=max(0.0, wall - stored.started_wall))
    c.store.abandon_round(stored.round_id, asdict(record), wall, None)  # no plan, so no charge
    if journal is not None:
        journal.forget(stored.round_id)
    if shard_rows is not None:  # after the close: a crash before it leaves them to prune, the count right
        shard_rows.drop()
    log.warning("%s: %s %d was %s; its %d stored update(s) dropped unread, none released; the next opens under "
                "the privacy plan", c.store.path, "round" if journal is None else "buffer", stored.round_id,
                PRIVACY_TURNED_ON, held)
    c._close(record)
    return True


class _ShardRows:
    """The shard tables' rows of a sharded round abandoned unread: the leader's own tables, or,
    where this coordinator runs without shards now, a connection of its own to the same
    database (state_dsn: only a PostgresStore holds a sharded round), closed after the drop."""

    def __init__(self, c, round_id: int):
        from .leadership import check_epoch
        from .sharding.tables import ShardTables  # psycopg: a sharded round's store is PostgreSQL

        tables = getattr(c, "tables", None)
        self.own = tables is None
        self.tables = ShardTables(c.config.state_dsn) if self.own else tables
        epoch = getattr(c.store, "epoch", None)
        self.check = None if epoch is None else (lambda db: check_epoch(db, epoch, self.tables.where))
        self.round_id = round_id

    def seal_counted(self) -> int:
        return self.tables.seal_counted(self.round_id, self.check)

    def drop(self) -> None:
        self.tables.drop_counted(self.round_id, self.check)
        if self.own:
            self.tables.close()


def check_ingest(stored: StoredRound, shards: int, path: object) -> None:
    """ConfigError for an open round whose accepted updates this process cannot see: one opened
    by a sharded leader (its updates are in the shard workers' tables, which a coordinator
    without shards never reads), or one opened without shards that holds accepted updates (a
    sharded leader's aggregate is what its workers counted, and they counted none of these)."""
    if not shards and stored.shards:
        raise ConfigError(f"{path}: round {stored.round_id} is open on {len(set(stored.shards.values()))} shard(s), "
                          "and the updates its shard workers acked are in their tables, which a coordinator with "
                          "shards = 0 does not read; finish it with the shards it was opened with (and its workers) "
                          "before turning sharding off")
    held = sum(isinstance(e, StoredUpdate) for e in stored.events)
    if shards and held:
        raise ConfigError(f"{path}: round {stored.round_id} was opened with shards = 0 and holds {held} accepted "
                          f"update(s) that no shard worker counted; finish it with shards = 0 before setting "
                          f"shards = {shards}")
