"""Must-show 3 of issue 14 against the real service: `fedge coordinator serve` in async mode in
its own process, device agents on real MQTT connections, a real Mosquitto. The coordinator is
killed with -9 while its buffer is half full; the restarted service replays the buffer from
the SQLite file, and at the end every update that was durable at the kill is in a committed
model, and no update is in one twice (the harness is the sync drill's, test_service_faults)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge.tools.broker import BrokerConfig, MosquittoProcess
from tests.coordinator.frozen_kill import kill9_once
from tests.coordinator.test_service_faults import Fleet, _query, _serve
from tests.tiny_model import build_tiny_model

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
DEVICES, K, VERSIONS = 6, 4, 4


def _config(tmp: Path, url: str, art_dir: Path) -> Path:
    path = tmp / "coordinator.toml"
    path.write_text(f"""
[broker]
url = "{url}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[service]
min_devices = {DEVICES}
rounds = {VERSIONS}

[coordinator]
mode = "async"
artifacts_dir = "{art_dir}"
state_db = "{tmp / 'coordinator.db'}"
round_deadline_s = 60
task_resend_s = 1.0

[coordinator.async]
concurrency = {DEVICES}
buffer_size = {K}
max_staleness = 10

[coordinator.evaluation]
every_rounds = 0

[coordinator.hyper]
epochs = 1
batch_size = 8
lr = 0.1

[coordinator.compression]
quant_bits = 8
""")
    return path


def _buffers(db: Path) -> list[tuple[int, str, dict]]:
    rows = _query(db, "SELECT round_id, status, record FROM rounds ORDER BY round_id")
    return [(r, s, json.loads(rec) if rec else {}) for r, s, rec in rows]


def _open_buffer_keys(db: Path) -> list[tuple[str, int, str]]:
    return _query(db, "SELECT device_id, u.round_id, update_id FROM async_updates u JOIN rounds r "
                      "ON r.round_id = u.buffer_id WHERE r.status = 'open'")


def test_coordinator_kill9_with_the_buffer_half_full_loses_nothing_and_counts_nothing_twice(tmp_path,
                                                                                          mosquitto_binary):
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    broker = MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path / "broker").start()
    db, log = tmp_path / "coordinator.db", tmp_path / "coordinator.log"
    # Devices of different speeds, so updates arrive spread out and the buffer is seen half full.
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp_path / "devices",
                  slow={f"dev-{i}": 0.4 * (i + 1) for i in range(DEVICES)})
    proc = _serve(_config(tmp_path, broker.url, art_dir), log)
    try:
        # Read with the service frozen: updates arrive ~0.4 s apart, and one stored between a look
        # and the kill (a stalled test machine) could fill the buffer, flush it, and leave the
        # kill in a fresh empty one.
        kill9_once("a committed buffer and the next one half full", proc,
                   lambda: (_buffers(db), _open_buffer_keys(db)),
                   lambda seen: any(s == "committed" for _, s, _ in seen[0]) and K // 2 <= len(seen[1]) < K,
                   120, log)
        held = _open_buffer_keys(db)  # durable, so acked or about to be: they must all count
        hit = [r for r, s, _ in _buffers(db) if s == "open"]
        assert len(hit) == 1 and K // 2 <= len(held) < K, (hit, held)

        proc = _serve(_config(tmp_path, broker.url, art_dir), log)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        fleet.close()
        broker.close()

    buffers = _buffers(db)
    committed = [r for r, s, _ in buffers if s == "committed"]
    versions = _query(db, "SELECT version, round_id FROM models ORDER BY version")
    assert [v for v, _ in versions][-1] == VERSIONS and len(committed) == VERSIONS, (buffers, versions)
    assert hit[0] in committed  # the interrupted buffer resumed and flushed
    rows = _query(db, "SELECT device_id, round_id, update_id, buffer_id FROM async_updates")
    in_buffer = {(d, r, u): b for d, r, u, b in rows}
    assert len(in_buffer) == len(rows)  # no key twice (also the table's primary key)
    for key in held:  # nothing durable at the kill was lost: each is in the buffer that committed
        assert in_buffer[tuple(key)] == hit[0], key
    for buffer_id, status, record in buffers:
        if status == "committed":  # each flush holds exactly K updates, each counted once
            assert sum(1 for b in in_buffer.values() if b == buffer_id) == record["reports"] == K, (buffer_id, record)
    assert f"buffer {hit[0]} resumed" in log.read_text()
