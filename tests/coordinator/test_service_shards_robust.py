"""A robust aggregator on a sharded fleet, as services on a real Mosquitto and PostgreSQL:
`fedge coordinator serve` (the leader, shards = 2, aggregator = "median"), two `--role worker`
processes, 20 real device agents of which one is poisoned (every coordinate of its update is
POISON, whatever it trained).

Oracle: every committed model equals, bit for bit, the single-machine median (the registry's
aggregator, as one coordinator builds it) fed the updates the store says the workers counted,
in (shard, seq) order, plus FedAvg's server step (shard_reference.robust_reference). The
poisoned update is among them, and the poison is resisted: the model moves far less than a
plain mean of the same stored updates would move it.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.strategies import ServerState, make_strategy
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import Update
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from tests.coordinator.shard_reference import robust_reference
from tests.coordinator.test_service_faults import DEVICES as FAULTS_DEVICES
from tests.coordinator.test_service_faults import Fleet, SlowRuntime, _wait, drill  # noqa: F401 (a fixture)
from tests.coordinator.test_service_faults import _config as faults_config
from tests.coordinator.test_service_shards import HYPER, K, _params, _rows, _serve, stop

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
DEVICES, ROUNDS = 20, 2
POISON = 100.0
POISONED = "dev-3"


class PoisonedRuntime(SlowRuntime):
    """Trains as usual, then sends POISON in every coordinate (the agent keeps what it returns)."""

    def handle_task(self, task, deadline_check=None, journal=None):
        reply = super().handle_task(task, deadline_check, None)
        if not isinstance(reply, Update):
            return reply
        honest = decompress_update(decode_tensors(reply.payload))
        return replace(reply, payload=encode_dense({k: np.full(np.shape(v), POISON, np.float32)
                                                    for k, v in honest.items()}))


def _config(tmp, url, art_dir, dsn):
    path = faults_config(tmp, url, art_dir, rounds=ROUNDS)
    text = path.read_text().replace(f" = {FAULTS_DEVICES}\n", f" = {DEVICES}\n")
    state_db = f'state_db = "{tmp / "coordinator.db"}"'
    assert state_db in text and text.count(f" = {DEVICES}\n") == 3
    path.write_text(text.replace(state_db, f'state_dsn = "{dsn}"\nkeep_versions = 10\nshards = {K}\n'
                                           'aggregator = "median"'))
    return path


def test_a_poisoned_device_is_resisted_by_the_median_on_shards_as_on_one_machine(drill, postgres_dsn):  # noqa: F811
    tmp, broker, art_dir, manifest = drill
    config = _config(tmp, broker.url, art_dir, postgres_dsn)
    logs = {name: tmp / f"{name}.log" for name in ("leader", "w1", "w2")}
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={}, devices=DEVICES)
    poisoned = next(a for a in fleet.agents if a.runtime.device_id == POISONED)
    poisoned.runtime.__class__ = PoisonedRuntime  # before the leader exists: no task has reached it
    procs = {}
    started = time.monotonic()
    try:
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        procs["leader"] = _serve(config, logs["leader"])
        assert procs["leader"].wait(timeout=240) == 0, logs["leader"].read_text()[-3000:]
        elapsed = time.monotonic() - started
    finally:
        stop(procs.values())
        fleet.close()
    cfg = CoordinatorConfig(aggregator="median")
    strategy = make_strategy("fedavg", HYPER)
    rounds = _rows(postgres_dsn, "SELECT round_id FROM rounds WHERE status = 'committed' ORDER BY round_id")
    assert len(rounds) == ROUNDS, logs["leader"].read_text()[-3000:]
    for version, (round_id,) in enumerate(rounds, 1):
        old = ServerState(version - 1, _params(postgres_dsn, version - 1))
        want, counted = robust_reference(lambda sql, *a: _rows(postgres_dsn, sql, *a), round_id, old, strategy,
                                         DEVICES, cfg)
        assert counted == DEVICES
        got = _params(postgres_dsn, version)
        for k in want.params:
            assert np.array_equal(got[k], want.params[k]), (round_id, k)
        stored = _rows(postgres_dsn, "SELECT device_id, weight, payload FROM shard_updates WHERE round_id = %s",
                       round_id)
        deltas = {d: (w, decompress_update(decode_tensors(bytes(p)))) for d, w, p in stored}
        assert all(np.all(v == POISON) for v in deltas[POISONED][1].values())  # counted, not refused
        total = sum(w for w, _ in deltas.values())
        mean_moves = max(float(np.max(np.abs(sum(w * d[k].astype(np.float64) for w, d in deltas.values()) / total)))
                         for k in got)
        moved = max(float(np.max(np.abs(got[k] - old.params[k]))) for k in got)
        assert mean_moves > 2.0 and moved < 0.5, (round_id, mean_moves, moved)
    print(f"robust shards: {ROUNDS} rounds x {DEVICES} devices (1 poisoned) in {elapsed:.1f} s; "
          f"median moved the model by at most {moved:.3f}, a mean would have moved it {mean_moves:.1f}")
