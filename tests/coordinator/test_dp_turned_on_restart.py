"""A coordinator restarted with [coordinator.privacy] turned on while a round (or an async buffer)
opened with privacy off is still open. That round has no privacy plan. Resumed without one, the
updates it took after the restart were neither clipped to S nor noised, its model was released
with no ledger event, and `fedge coordinator privacy` said nothing was spent. Refused at start
then, the refusal told the operator to finish it with privacy off: one more non-private model
released, which an operator turning privacy on does not want. Now the restart abandons it
unread (restart.py, abandon_unplanned), as it abandons a secure round: nothing of it is applied
or charged, its stored payloads are deleted, the rounds table, the log and
fedge_rounds_total{outcome="abandoned"} say so, and the next round runs under the privacy plan."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.restart import PRIVACY_TURNED_ON
from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.coordinator.test_async_server import _send
from tests.tiny_model import build_tiny_model

PRIVACY = PrivacyConfig(enabled=True, target_epsilon=50.0, delta=1e-5, noise_multiplier=1.0, clip_norm=0.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _rows(db, sql: str) -> list[tuple]:
    """The state file as a second reader sees it (the oracle: not the store's own read)."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _payloads_held(db, mode: str) -> int:
    """Round 1's update payloads still on disk: the async journal's rows, or the sync round's log file."""
    if mode == "async":
        return _rows(db, "SELECT COUNT(*) FROM async_updates WHERE buffer_id = 1 AND payload IS NOT NULL")[0][0]
    return int((db.parent / f"{db.name}.payloads" / "round-1.log").is_file())


@pytest.mark.parametrize("config", [
    {"mode": "async", "async_": AsyncConfig(concurrency=3, buffer_size=3, max_staleness=5)},
    {"clients_per_round": 3, "over_selection": 1.0},
], ids=["async", "sync"])
def test_a_round_opened_with_privacy_off_is_abandoned_by_a_restart_with_privacy_on(model, tmp_path, config,
                                                                                   caplog):
    mode = config.get("mode", "sync")
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(db), weighting="equal", **config)
    devs = [ManualDevice(fleet, f"m{i}", 10) for i in range(3)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round() and c.round.privacy is None
    c.tick()
    fleet.drain()
    _send(fleet, devs[0], random_delta(c.shapes, np.random.default_rng(0), scale=5.0))  # far over S = 0.5
    assert c.state.version == 0 and c.round is not None and _payloads_held(db, mode) == 1
    v0 = {k: v.copy() for k, v in c.state.params.items()}

    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        on = fleet.restart(store=RoundStore(db), config=replace(c.config, privacy=PRIVACY))
    # abandoned at the start: no round open, the model where it was, nothing charged
    assert on.round is None and on.state.version == 0 and on.next_round_id == 2
    assert all(np.array_equal(on.state.params[k], v0[k]) for k in v0)
    assert on.store.privacy_ledger() == []
    assert [r.message for r in caplog.records if PRIVACY_TURNED_ON in r.message] == [
        f"{db}: {'buffer' if mode == 'async' else 'round'} 1 was {PRIVACY_TURNED_ON}; its 1 stored update(s) "
        "dropped unread, none released; the next opens under the privacy plan"]
    (status, ), = _rows(db, "SELECT status FROM rounds WHERE round_id = 1")
    assert status == "abandoned" and _payloads_held(db, mode) == 0
    (record, ) = on.store.round_records()
    assert (record["round_id"], record["committed"], record["why"], record["reports"]) == \
        (1, False, PRIVACY_TURNED_ON, 1)
    registry = on.metrics.registry
    assert registry.get_sample_value("fedge_rounds_total", {"outcome": "abandoned"}) == 1
    assert registry.get_sample_value("fedge_rounds_total", {"outcome": "committed"}) == 0

    # the next round is private: planned, its three updates clipped and noised, charged once
    assert on.begin_round() and on.round.ctx.round_id == 2 and on.round.privacy is not None
    on.tick()
    fleet.drain()
    rng = np.random.default_rng(1)
    for i, d in enumerate(devs):
        _send(fleet, d, random_delta(on.shapes, rng), update_id=f"private-{i}")
    record = on.tick()  # sync: the round closes at its target; async: the buffer's flush, at K
    assert record is not None and record.committed and record.round_id == 2 and record.reports == 3
    assert on.state.version == 1
    assert _rows(db, "SELECT round_id FROM privacy_ledger") == [(2,)]
    assert registry.get_sample_value("fedge_privacy_rounds_charged") == 1
    # every model version there is came from a committed round: v1 from round 2, none from round 1
    assert _rows(db, "SELECT version, round_id FROM models ORDER BY version") == [(0, None), (1, 2)]


def test_with_privacy_still_off_the_open_round_resumes_and_nothing_is_abandoned(model, tmp_path):
    """The control: the abandonment is privacy being turned on's alone. Privacy still off, the
    restart resumes the open buffer with its update and flushes it at K; stopped at version 1
    ([service] rounds = 1) no buffer opens after it, and a restart with privacy on then has no
    round to abandon: its first buffer is planned and charged."""
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(db), weighting="equal", mode="async",
                       async_=AsyncConfig(concurrency=3, buffer_size=3, max_staleness=5))
    devs = [ManualDevice(fleet, f"m{i}", 10) for i in range(3)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    c.tick()
    fleet.drain()
    rng = np.random.default_rng(1)
    _send(fleet, devs[0], random_delta(c.shapes, rng))
    again = fleet.restart(store=RoundStore(db))
    assert again.round is not None and again.round.privacy is None and again.machine.buffered == 1
    again.stop_after = lambda record: again.state.version >= 1  # the service's should_stop, rounds = 1
    again.tick()
    fleet.drain()
    for d in devs[1:]:
        _send(fleet, d, random_delta(again.shapes, rng))
    assert again.state.version == 1 and again.round is None
    assert _rows(db, "SELECT round_id, status FROM rounds") == [(1, "committed")]
    on = fleet.restart(store=RoundStore(db), config=replace(c.config, privacy=PRIVACY))
    assert on.round is None and on.metrics.registry.get_sample_value("fedge_rounds_total",
                                                                     {"outcome": "abandoned"}) == 0
    assert on.begin_round() and on.round.privacy is not None
