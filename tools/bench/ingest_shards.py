"""`fedge bench ingest --workers 1,2 --dsn postgresql://...`: updates per second through K
aggregator workers (coordinator/sharding), measured like the coordinator's drain.

Per K: a fresh database on the DSN's server (created and dropped here: the DSN's user needs
CREATEDB), a leader (ShardedCoordinator, shards = K) with round 1 open; each shard's
persistent session subscribed and left offline; the backlog (one valid update per device,
on its shard topic) published; then K worker processes, each already holding its shard's
lease and its store connection, connect at once on a signal and drain their shard as
serve_shard does (validate; one transaction per burst of waiting updates, with their keys
and the float64 partial sum; then the Acks). Seconds = from the signal to the last worker
done; the leader must then commit the round with every update, or the run raises (a round
that did not happen is not a measurement).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import uuid
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.service import coordinator_link
from fedge.coordinator.sharding.leader import ShardedCoordinator
from fedge.coordinator.sharding.worker import shard_client_id
from fedge.edge_runtime.kernel.protocol import CompressionSpec, shard_of, shard_updates_filter
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

from .ingest_drain import SESSION_S, backlog, bench_model, open_bench_round, publish_backlog


def _database(dsn: str, name: str | None) -> str:
    """dsn with its database replaced by `name`."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _admin(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def _worker(dsn: str, shard: int, cfg: CoordinatorConfig, link: MqttSettings, model_id: str, shapes: dict,
            expected: int, go, ready, done) -> None:
    """One worker process: lease and store first, then wait for `go`, drain `expected` updates."""
    from fedge.coordinator.sharding.lease import ShardLease
    from fedge.coordinator.sharding.tables import ShardTables
    from fedge.coordinator.sharding.worker import ShardWorker, next_burst

    lease = ShardLease(dsn, shard)
    if not lease.try_acquire():
        raise RuntimeError(f"shard {shard}: lease held by someone else")
    tables = ShardTables(dsn)
    transport = MqttTransport(shard_client_id(shard), link)
    worker = ShardWorker(shard, lease.epoch, tables, transport, cfg, model_id, shapes)
    worker.refresh()
    ready.put(shard)
    go.wait()
    transport.connect(timeout=60)
    handled = 0
    while handled < expected:  # as serve_shard does: what waits, in one transaction
        burst = next_burst(transport, 5.0)
        if not burst:
            break
        worker.handle_burst(burst)
        handled += len(burst)
    finished = time.perf_counter()
    transport.flush(30)
    transport.close()
    tables.close()
    lease.close()
    done.put((shard, handled, worker.accepted, finished))


def shards_drain(broker: MqttSettings, dsn: str, devices: int, params: int, quant_bits: int, workers: int, seed: int,
                 timeout_s: float) -> float:
    """Seconds for `workers` workers to drain a backlog of `devices` updates (module docstring);
    broker: the workers' link (url, and credentials where the broker requires them)."""
    name = f"fedge_bench_{uuid.uuid4().hex[:12]}"
    _admin(dsn, f'CREATE DATABASE "{name}"')
    db = _database(dsn, name)
    try:
        return _drain(broker, db, devices, params, quant_bits, workers, seed, timeout_s)
    finally:
        _admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drain(broker, db, devices, params, quant_bits, workers, seed, timeout_s) -> float:
    manifest, initial = bench_model(params)
    cfg = CoordinatorConfig(clients_per_round=devices, over_selection=1.0, min_reports=devices,
                            round_deadline_s=24 * 3600, state_dsn=db, aggregator="mean", shards=workers,
                            compression=CompressionSpec(quant_bits=quant_bits))
    # The leader begins a round only on shards with a live worker (their lease held): hold each
    # lease while it opens the round, so every device keeps its home shard; the workers, spawned
    # after (they need the round's tasks), take the leases over.
    from fedge.coordinator.sharding.lease import ShardLease

    held = [ShardLease(db, k) for k in range(workers)]
    try:
        if not all(lease.try_acquire() for lease in held):
            raise RuntimeError("a shard lease of the fresh benchmark database is held")
        leader = open_bench_round(cfg, manifest, initial, devices, ShardedCoordinator)
    finally:
        for lease in held:
            lease.close()
    leader.poll_s = 0.0
    ctx = leader.round.ctx
    messages = backlog(ctx.tasks, ctx.round_id, manifest, quant_bits, seed, shards=workers)
    link = replace(coordinator_link(replace(broker, session_expiry_s=SESSION_S, connect_timeout_s=60), cfg),
                   clean_start=False)
    for shard in range(workers):  # the shard sessions exist, offline: the broker queues the backlog for them
        first = MqttTransport(shard_client_id(shard), link).connect(timeout=60)
        first.subscribe(shard_updates_filter(shard))
        first.close()
    host, port, _ = link.endpoint()
    publish_backlog(host, port, messages, timeout_s, link.username, link.password)
    per_shard = [0] * workers
    for topic, _ in messages:
        per_shard[shard_of(topic)[0]] += 1
    ctx_mp = mp.get_context("spawn")
    go, ready, done = ctx_mp.Event(), ctx_mp.Queue(), ctx_mp.Queue()
    procs = [ctx_mp.Process(target=_worker, args=(db, k, cfg, link, manifest.model_id, ctx.shapes, per_shard[k], go,
                                                  ready, done), daemon=True) for k in range(workers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    results = [done.get(timeout=timeout_s) for _ in procs]
    elapsed = max(r[3] for r in results) - started  # perf_counter is system-wide on Linux
    for p in procs:
        p.join(timeout=30)
    record = leader.tick()
    leader.store.close()
    leader.tables.close()
    accepted = sum(r[2] for r in results)
    if record is None or not record.committed or accepted != devices:
        raise RuntimeError(f"the sharded benchmark round did not commit with all {devices} updates "
                           f"({accepted} counted): {record and record.why}")
    return elapsed


def shards_on_ejabberd(tmp, workers, dsn, devices, params, quant_bits, repeats, timeout_s) -> dict:
    """updates_per_second per K through a two-node ejabberd cluster (workers and the backlog's
    publisher on node 1, logged in as "coordinator"), or why it was skipped."""
    if not workers:
        return {}
    from fedge.tools.broker.ejabberd import INSTALL_HINT, EjabberdCluster, find_ejabberd

    found = find_ejabberd()
    if found is None:
        return {"skipped": f"no ejabberd; {INSTALL_HINT}"}
    cluster = EjabberdCluster(*found, tmp / "ejabberd")
    runs: dict[int, list[float]] = {k: [] for k in workers}
    try:
        cluster.start()
        link = cluster.settings("coordinator", node=0)
        for i in range(repeats):
            for k in workers:
                runs[k].append(shards_drain(link, dsn, devices, params, quant_bits, k, i, timeout_s))
    finally:
        cluster.close()
    return {"updates_per_second": {str(k): round(devices / statistics.median(v), 1) for k, v in runs.items()},
            "drain_seconds_runs": {str(k): [round(x, 4) for x in v] for k, v in runs.items()}}
