"""Every strategy resumes bit-for-bit after the coordinator dies mid-round.

Oracle: the same fleet and script run without a crash. The crashed run drops its Coordinator
object in the middle of round 3 (after some of its updates were accepted and stored), builds
a new one on the same SQLite file with a fresh strategy from the same config, lets the agents
re-publish what was not acked, and goes on. Params and every array of the strategy's state
(server momentum, Adam moments, SCAFFOLD's c) must come out with identical bytes, which
needs the stored updates, their control-variate uploads included, replayed in order.
"""

from __future__ import annotations

import sqlite3

import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.store import RoundStore, StoredRound, StoredUpdate
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper
from tests.coordinator.fleet import NO_EVAL
from tests.coordinator.strategy_fleet import NAMES, toy_fleet
from tests.tiny_model import build_tiny_model

CONFIG = dict(clients_per_round=4, over_selection=1.0, min_reports=4, round_deadline_s=600.0, evaluation=NO_EVAL,
              hyper=TaskHyper(epochs=1, batch_size=10, lr=0.1),
              compression=CompressionSpec(quant_bits=8, topk_fraction=0.5))
ROUNDS, CRASH_ROUND = 4, 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """The uninterrupted run's final state, per strategy (computed once)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _run(model, tmp_path_factory.mktemp(f"ref-{name}"), name).coordinator.state
        return cache[name]

    return get


def _round(fleet, crash_after: int | None = None) -> None:
    """One round in which all four devices report, in agent order. With crash_after=n the
    coordinator takes n updates, then is dropped and restarted on its store."""
    c = fleet.coordinator
    assert c.begin_round()
    c.pump(0.0)
    for agent in fleet.agents:  # every agent trains and publishes, in order
        while agent.poll(0.0):
            pass
    if crash_after is not None:
        for _ in range(crash_after):
            assert c.pump(0.0)
        path, cfg = c.store.path, c.config
        _, manifest, runtime = fleet.model
        # The old object is dropped, never closed: a process killed between two statements.
        fleet.coordinator = Coordinator(fleet.broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                                        runtime.initial("shared"), cfg, clock=fleet.clock, store=RoundStore(path))
        fleet.coordinator.start()
        assert len(fleet.coordinator.round.machine.reported) == crash_after
        for agent in fleet.agents:
            agent.republish_pending()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record is not None and record.committed and record.reports == 4


def _run(model, tmp_path, name, crash_after=None):
    cfg = CoordinatorConfig(strategy=name, **CONFIG)
    tmp_path.mkdir(exist_ok=True)
    fleet = toy_fleet(model, tmp_path, cfg, devices=4, store=RoundStore(tmp_path / "state.db"))
    for r in range(1, ROUNDS + 1):
        _round(fleet, crash_after if r == CRASH_ROUND else None)
    return fleet


@pytest.mark.parametrize("crash_after", [2, 4], ids=["after-2-of-4", "all-stored-not-committed"])
@pytest.mark.parametrize("name", NAMES)
def test_restart_mid_round_resumes_every_strategy_bit_for_bit(model, reference, tmp_path, name, crash_after):
    ref = reference(name)
    fleet = _run(model, tmp_path / "crash", name, crash_after)
    got = fleet.coordinator.state
    # Re-published (and re-answered to the resent tasks), acked, never re-counted.
    assert set(fleet.coordinator.rejections) == {"duplicate"}
    assert fleet.coordinator.rejections["duplicate"] >= crash_after
    assert got.version == ref.version == ROUNDS
    _assert_same_bits(got, ref)
    strategy_groups = {"fedavgm": {"momentum"}, "scaffold": {"control"},
                       "fedadagrad": {"m", "v"}, "fedadam": {"m", "v"}, "fedyogi": {"m", "v"}}.get(name, set())
    assert set(got.extra) == strategy_groups | {"robust"}  # the default aggregator's norm history too
    # ...and what the store holds is that state too.
    cfg = fleet.coordinator.config
    _, manifest, runtime = fleet.model
    store = RoundStore(fleet.coordinator.store.path)
    again = Coordinator(fleet.broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                        runtime.initial("shared"), cfg, clock=fleet.clock, store=store)
    _assert_same_bits(again.state, ref)


def _assert_same_bits(got, want) -> None:
    assert set(got.params) == set(want.params)
    for k, v in want.params.items():
        assert got.params[k].dtype == v.dtype and got.params[k].tobytes() == v.tobytes(), k
    assert set(got.extra) == set(want.extra)
    for group, arrays in want.extra.items():
        assert set(got.extra[group]) == set(arrays), group
        for k, v in arrays.items():
            assert got.extra[group][k].dtype == v.dtype and got.extra[group][k].tobytes() == v.tobytes(), (group, k)


def test_store_keeps_control_uploads_of_the_open_round_and_upgrades_a_version_1_file(tmp_path):
    path = tmp_path / "state.db"
    store = RoundStore(path)
    store.open_round(StoredRound(1, 0, ("a", "b"), {"a": "ta", "b": "tb"}, 2, 1, 1000.0, 1600.0))
    store.add_update(1, StoredUpdate(0, "a", "u-a", "d" * 64, 7, b"payload-a", b"control-a"))
    store.add_update(1, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))
    events = store.load_open_round().events
    assert [(e.payload, e.control) for e in events] == [(b"payload-a", b"control-a"), (b"payload-b", b"")]
    store.close()
    # What a version 1 file looks like: no control column (nor version 3's privacy, nor version
    # 4's payload log columns), the payloads in their rows.
    db = sqlite3.connect(path)
    for table, column in (("updates", "control"), ("rounds", "privacy"), ("updates", "log_offset"),
                          ("updates", "payload_len"), ("updates", "control_len")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.executemany("UPDATE updates SET payload = ? WHERE device_id = ?", [(b"payload-a", "a"), (b"payload-b", "b")])
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    db.commit()
    db.close()
    upgraded = RoundStore(path)
    events = upgraded.load_open_round().events
    assert [(e.payload, e.control) for e in events] == [(b"payload-a", b""), (b"payload-b", b"")]
    assert sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("4",)
    upgraded.abandon_round(1, {"round_id": 1}, 1700.0)
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM updates WHERE control IS NOT NULL").fetchone() == (0,)
