"""`fedge coordinator serve --role worker`: one aggregator worker process (worker.py).

It reads the leader's service file: [broker], [service] shard_credentials (with it, the worker
of shard k logs in as fedge-shard-k: identity.py; without, as [broker] says), [coordinator]
state_dsn, shards, artifacts_dir (the model's shapes) and the validation settings (norm_bound,
max_update_bytes, max_examples, weighting).
A worker whose lease fails exits with EXIT_LOST_LEADERSHIP (4), as a deposed leader does, so
its supervisor restarts it and it stands by for any free shard. With [coordinator]
metrics_port, worker k serves its metrics (accepted, rejected by reason) on metrics_port + 1 + k.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError, PublishRefused
from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport

from ..errors import StoreLinkLost
from ..leadership import LeadershipError
from ..metrics_http import serve_metrics
from .identity import shard_identities
from .tables import ShardTables
from .worker import ShardWorker, serve_shard, shard_client_id, take_a_shard

log = logging.getLogger("fedge.coordinator.worker")


def run_worker(cfg, stopping: threading.Event, link) -> int:
    """cfg: a ServiceConfig; link(broker, coordinator) -> MqttSettings (service.coordinator_link)."""
    c = cfg.coordinator
    if not c.state_dsn or c.shards < 1:
        raise ConfigError("--role worker needs coordinator.state_dsn (PostgreSQL: the shard tables) and "
                          "coordinator.shards >= 1; a single coordinator (shards = 0) ingests updates itself")
    manifest = load_manifest(Path(c.artifacts_dir), verify=True)
    shapes = {p.name: p.shape for p in manifest.by_role("shared")}
    identities = shard_identities(cfg.broker, cfg.service.shard_credentials, c.shards)
    if identities is None and cfg.broker.username:
        log.warning("worker: logging in as %r, like the leader; a broker with use_username_as_clientid (the "
                    "shipped configs) gives every such process one client id and they knock each other off: set "
                    "[service] shard_credentials (fedge provision coordinator --shards K)", cfg.broker.username)
    lease = take_a_shard(c.state_dsn, c.shards, stopping)
    if lease is None:
        return 0
    tables = ShardTables(c.state_dsn)
    # A persistent session named for the shard: what was queued for its last worker comes to us.
    broker = cfg.broker if identities is None else identities[lease.shard]  # known only now: the shard won
    settings = replace(link(broker, c), clean_start=False)
    transport = MqttTransport(shard_client_id(lease.shard), settings)
    worker = ShardWorker(lease.shard, lease.epoch, tables, transport, c, manifest.model_id, shapes)
    if c.metrics_port:  # one endpoint per worker, next to the leader's: metrics_port + 1 + shard
        port = c.metrics_port + 1 + lease.shard
        serve_metrics(worker.metrics.registry, c.metrics_host, port)
        log.info("worker: metrics on http://%s:%d/metrics", c.metrics_host, port)
    try:
        transport.connect(timeout=30)
        serve_shard(worker, lease, stopping)
    except LeadershipError as exc:
        log.error("worker: lost shard %d, exiting to restart as a standby: %s", lease.shard, exc)
        return 4
    except StoreLinkLost as exc:  # as the leader's loop (STOPS_THE_SERVICE): exit 1, the restart reconnects
        log.error("worker: shard %d stops: %s", lease.shard, exc)
        raise
    finally:
        try:
            if transport.connected and not transport.flush(timeout=10):
                log.warning("worker: some Acks were not acknowledged by the broker before exit")
        except PublishRefused as exc:
            log.error("worker: PublishRefused before exit: %s", exc)
        transport.close()
        tables.close()
        lease.close()  # ends the lock's session: another worker takes the shard at once
    log.info("worker: shard %d stopped after %d updates", lease.shard, worker.accepted)
    return 0
