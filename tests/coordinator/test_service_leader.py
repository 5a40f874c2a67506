"""Leader and standby: two `fedge coordinator serve` processes on one PostgreSQL database, devices
on a real Mosquitto. Kill -9 the leader mid-round: the standby takes the lease, resumes the open
round from the store, and the fleet keeps committing; every round committed before the kill is
still there with the same record and bit-identical params, and no update is counted twice.
And a leader whose lease session ends (the server cut it) exits with status 4.
The drill's fleet, config and helpers are test_service_faults.py's, with state_dsn for state_db."""

from __future__ import annotations

import time

import pytest

from fedge.coordinator.leadership import LEADER_LOCK_KEY
from tests.coordinator.frozen_kill import kill9_once
from tests.coordinator.test_service_faults import DEVICES, Fleet, _config, _serve, _wait, drill  # noqa: F401, F811 (a fixture)
from tests.pg_server import import_psycopg

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
psycopg = import_psycopg()
ROUNDS = 4


def _rows(dsn: str, sql: str) -> list[tuple]:
    """Rows, or [] while no service has migrated the database yet."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def _committed(dsn: str) -> list[tuple[int, str]]:
    return _rows(dsn, "SELECT round_id, record FROM rounds WHERE status = 'committed' ORDER BY round_id")


def _params(dsn: str) -> dict[int, list[tuple]]:
    """Committed model versions -> their tensors' (kind, grp, name, dtype, shape, bytes), in order."""
    out: dict[int, list[tuple]] = {}
    for version, *tensor in _rows(dsn, "SELECT version, kind, grp, name, dtype, shape, data FROM tensors "
                                       "ORDER BY version, ord"):
        out.setdefault(version, []).append((*tensor[:-1], bytes(tensor[-1])))
    return out


def _epoch(dsn: str) -> int:
    rows = _rows(dsn, "SELECT epoch FROM leader")
    return rows[0][0] if rows else 0


def test_leader_kill9_mid_round_standby_takes_over_and_loses_no_committed_round(drill, postgres_dsn):  # noqa: F811
    tmp, broker, art_dir, manifest = drill
    config = _config(tmp, broker.url, art_dir, rounds=ROUNDS)
    text = config.read_text()
    sqlite_line = f'state_db = "{tmp / "coordinator.db"}"'
    assert sqlite_line in text
    # keep_versions: every committed version's params stay, to compare them after the takeover.
    config.write_text(text.replace(sqlite_line, f'state_dsn = "{postgres_dsn}"\nkeep_versions = 10'))
    leader_log, standby_log = tmp / "leader.log", tmp / "standby.log"
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-5": 3.0})
    leader = _serve(config, leader_log)
    standby = None
    try:
        _wait("the first service to lead", lambda: _epoch(postgres_dsn) == 1, 60, leader, leader_log)
        standby = _serve(config, standby_log)
        _wait("the second to wait as a standby", lambda: "standby: waiting for leadership" in standby_log.read_text(),
              60, standby, standby_log)
        # Read with the leader frozen (frozen_kill.py), so what is read is what it dies with: dev-5's
        # 3 s, which keeps round 2 open, is no bound on a stalled test between the reads and the kill.
        before, params_before, open_rounds, held = kill9_once(
            "round 1 to commit and round 2 to hold updates", leader,
            lambda: (_committed(postgres_dsn), _params(postgres_dsn),
                     _rows(postgres_dsn, "SELECT round_id FROM rounds WHERE status = 'open'"),
                     _rows(postgres_dsn, "SELECT COUNT(*) FROM updates u JOIN rounds r USING (round_id) "
                                         "WHERE r.status = 'open'")),
            lambda seen: len(seen[0]) >= 1 and seen[3] and seen[3][0][0] >= 2, 90, leader_log)
        killed = time.monotonic()
        [(open_round,)] = open_rounds
        _wait("the standby to take the lease", lambda: _epoch(postgres_dsn) == 2, 30, standby, standby_log)
        takeover_s = time.monotonic() - killed
        assert standby.wait(timeout=240) == 0, standby_log.read_text()[-3000:]
    finally:
        for proc in (leader, standby):
            if proc is not None and proc.poll() is None:
                proc.kill()
        fleet.close()
    committed = _committed(postgres_dsn)
    assert committed[: len(before)] == before  # no committed round lost, records unchanged
    params_after = _params(postgres_dsn)
    assert all(params_after[v] == tensors for v, tensors in params_before.items())  # bit-identical params
    assert len(committed) == ROUNDS and open_round in [r for r, _ in committed]  # the interrupted round committed
    per_round: dict[int, list[str]] = {}
    for device_id, round_id in _rows(postgres_dsn, "SELECT device_id, round_id FROM updates"):
        per_round.setdefault(round_id, []).append(device_id)
    for round_id, _ in committed:  # every committed round counted each device once
        assert sorted(per_round[round_id]) == sorted(set(per_round[round_id])) and len(per_round[round_id]) == DEVICES
    log = standby_log.read_text()
    assert "resum" in log.lower() and "holds" in log  # it led, and resumed the open round
    print(f"standby took the lease {takeover_s:.2f} s after the leader was killed")


def test_a_leader_whose_lease_session_ends_exits_with_status_4(drill, postgres_dsn):  # noqa: F811
    tmp, broker, art_dir, _ = drill
    config = _config(tmp, broker.url, art_dir, rounds=ROUNDS)
    config.write_text(config.read_text().replace(f'state_db = "{tmp / "coordinator.db"}"',
                                                 f'state_dsn = "{postgres_dsn}"'))
    log = tmp / "leader.log"
    leader = _serve(config, log)  # no devices: it leads and waits for them
    try:
        _wait("the service to lead", lambda: _epoch(postgres_dsn) == 1, 60, leader, log)
        # The server ends the lease's session (as after a network cut): the lock is gone.
        # (Only the lease's lock: a store's migration holds another advisory lock for a moment.)
        assert _rows(postgres_dsn, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                                   f"AND granted AND ((classid::bigint << 32) | objid::bigint) = {LEADER_LOCK_KEY}"
                     ) == [(True,)]
        assert leader.wait(timeout=30) == 4, log.read_text()[-3000:]
    finally:
        if leader.poll() is None:
            leader.kill()
    assert "no longer the leader" in log.read_text()
