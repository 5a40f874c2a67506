"""`fedge bench ingest`: how fast the coordinator takes in updates, and what a device task
costs in durable writes.

  coordinator_updates_per_second  a backlog of valid updates (one per device of an open round,
                  `--update-kb` each) waits in Mosquitto for the coordinator's offline persistent
                  session; the coordinator connects and drains it: decode, validate, store
                  (SQLite, the payloads in the round's payload log, durable before the Ack),
                  aggregate, Ack. updates / drain seconds.
  raw_paho_updates_per_second     a raw paho persistent session drains the same backlog the
                  same way (ingest_drain.py), in the same run: the ceiling.
  aggregate_bytes_per_second      the decode -> validate -> aggregate path alone, in process,
                  on one core, in bytes of Update messages per second, with `stages` (seconds
                  per stage over the backlog) and np.add on the same dense float32 arrays
                  (`np_add_bytes_per_second`) for scale (ingest_path.py).
  workers_updates_per_second      with `--workers 1,2 --dsn URL`: the same backlog drained by K
                  aggregator workers on shard topics, per K (ingest_shards.py), in the same run;
                  `workers_ejabberd_2_nodes` the same on a two-node ejabberd cluster (or why skipped).
  durable_writes_per_task         fsync'd writes per task of a training device (device_writes.py),
                  with `durable_writes_by_file`, and the same for `fedge bench mqtt`'s replaying
                  device (`durable_writes_per_task_replay`).

Every timing is repeated `--repeats` times (fresh coordinator, fresh store, fresh backlog each
time); rates are computed from the median run, and the best run and every run are listed. The
in-process path also reports rates per second of the thread's own CPU time
(`aggregate_bytes_per_cpu_second`, `stages_cpu`): on a shared machine the wall clock also
counts the time the thread waited for a core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.cli_args import MAX_KIB, int_in, out_file_arg, seconds_arg

from . import device_writes
from .ingest_drain import coordinator_drain, prepare, raw_drain
from .ingest_path import measure
from .ingest_shards import shards_drain, shards_on_ejabberd

log = logging.getLogger("fedge.bench.ingest")

TARGET_DRAIN_RATIO = 0.5  # coordinator rate / raw paho rate (issue 14)
TARGET_AGGREGATE_BYTES_PER_SECOND = 200e6
PATH_MESSAGES = 500  # updates through the in-process path per timing (about 50 MB)


def run(devices: int = 2000, update_kb: int = 100, quant_bits: int = 8, repeats: int = 3,
        json_path: str | None = None, timeout_s: float = 600.0, writes: bool = True,
        workers: tuple[int, ...] = (), dsn: str = "") -> dict:
    from fedge.tools.broker import BrokerConfig, MosquittoProcess

    # int8 codes: one byte per parameter, so update_kb KiB of payload is update_kb * 1024 params
    params = update_kb * 1024 * {8: 1, 4: 2, 32: 1}[quant_bits] // (4 if quant_bits == 32 else 1)
    if workers and not dsn:
        raise ValueError("--workers needs --dsn: the shard tables live in PostgreSQL")
    raw_s, coord_s, path = [], [], None
    shard_s: dict[int, list[float]] = {k: [] for k in workers}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-ingest-") as tmp:
        broker_cfg = BrokerConfig(persistence=False, max_queued_messages=devices + 100,
                                  log_types=("error", "warning"))
        with MosquittoProcess(broker_cfg, workdir=Path(tmp) / "broker") as broker:
            host, port = "127.0.0.1", broker.port
            for i in range(repeats):
                workdir = Path(tmp) / f"run{i}"
                workdir.mkdir()
                coordinator, messages = prepare(workdir, devices, params, quant_bits, seed=i)
                if path is None:  # the same messages (at most PATH_MESSAGES), in process: no broker, no store
                    path = measure(messages[:PATH_MESSAGES], coordinator.round.ctx,
                                   coordinator.config.max_update_bytes, repeats)
                raw_s.append(raw_drain(host, port, messages, timeout_s))
                coord_s.append(coordinator_drain(broker.url, coordinator, messages, timeout_s))
                update_bytes = len(messages[0][1])
                log.warning("run %d: raw paho %.3f s, coordinator %.3f s for %d updates", i, raw_s[-1], coord_s[-1],
                            devices)
                del coordinator, messages
                for k in workers:  # the same backlog size through K aggregator workers (ingest_shards.py)
                    shard_s[k].append(shards_drain(MqttSettings(url=broker.url), dsn, devices, params, quant_bits,
                                                   k, i, timeout_s))
                    log.warning("run %d: %d workers %.3f s for %d updates", i, k, shard_s[k][-1], devices)
        ejabberd = shards_on_ejabberd(Path(tmp), workers, dsn, devices, params, quant_bits, repeats, timeout_s)
    raw_rate, coord_rate = devices / statistics.median(raw_s), devices / statistics.median(coord_s)
    result = {
        "devices": devices,
        "update_bytes": update_bytes,
        "quant_bits": quant_bits,
        "params": params,
        "coordinator_updates_per_second": round(coord_rate, 1),
        "coordinator_updates_per_second_best": round(devices / min(coord_s), 1),
        "coordinator_drain_seconds_runs": [round(s, 4) for s in coord_s],
        "raw_paho_updates_per_second": round(raw_rate, 1),
        "raw_paho_updates_per_second_best": round(devices / min(raw_s), 1),
        "raw_paho_drain_seconds_runs": [round(s, 4) for s in raw_s],
        "drain_ratio": round(coord_rate / raw_rate, 3),
        "target_drain_ratio": TARGET_DRAIN_RATIO,
        **{k: (round(v) if isinstance(v, float) else v) for k, v in path.items()},
        "target_aggregate_bytes_per_second": TARGET_AGGREGATE_BYTES_PER_SECOND,
        **({"workers_updates_per_second": {str(k): round(devices / statistics.median(v), 1)
                                           for k, v in shard_s.items()},
            "workers_drain_seconds_runs": {str(k): [round(x, 4) for x in v] for k, v in shard_s.items()},
            "workers_ejabberd_2_nodes": ejabberd} if workers else {}),
        "repeats": repeats,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    result["durable_writes_per_task"] = None  # the schema's key in every run: null under --no-writes
    if writes:
        training, replay = device_writes.training(), device_writes.replay()
        result.update(durable_writes_per_task=training["per_task"], durable_writes_by_file=training["by_file"],
                      durable_writes_tasks=training["tasks"], durable_writes_per_task_replay=replay["per_task"],
                      durable_writes_by_file_replay=replay["by_file"])
    if json_path:
        atomic_write_bytes(Path(json_path), json.dumps(result, indent=2).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int_in(1), default=2000, help="updates in the backlog (one per device)")
    p.add_argument("--update-kb", type=int_in(1, MAX_KIB), default=100, help="payload of each update (KiB)")
    p.add_argument("--quant-bits", type=int, default=8, choices=(32, 8, 4), help="the updates' encoding")
    p.add_argument("--repeats", type=int_in(1), default=3)
    p.add_argument("--timeout", type=seconds_arg, default=600.0, help="give up a phase after this many seconds")
    p.add_argument("--no-writes", action="store_true", help="skip counting the devices' durable writes")
    p.add_argument("--json", dest="json_path", type=out_file_arg, help="write the result here")
    p.add_argument("--workers", default="", help="also drain through K aggregator workers, e.g. 1,2 "
                                                  "(coordinator/sharding; needs --dsn)")
    p.add_argument("--dsn", default="", help="PostgreSQL server for --workers; each run creates and drops "
                                             "its own database there")
    args = p.parse_args(argv)
    try:
        workers = tuple(int(k) for k in args.workers.split(",") if k)
    except ValueError:
        p.error("--workers: a comma-separated list of shard counts, e.g. 1,2")
    if any(k < 1 for k in workers) or (workers and not args.dsn):
        p.error("--workers counts must be >= 1, and --workers needs --dsn")
    if args.dsn and not workers:  # read by the worker runs only: it ran without them, exit 0
        p.error("--dsn applies to --workers (the aggregator workers' shard tables); give --workers too")
    result = run(args.devices, args.update_kb, args.quant_bits, args.repeats, args.json_path, args.timeout,
                 not args.no_writes, workers, args.dsn)
    print(json.dumps(result, indent=2))
    return 0
