"""Robust aggregators and central DP-FedAvg on a sharded fleet (coordinator/sharding/replay.py,
privacy.py): a leader, two workers and hand-driven devices over the in-memory broker and a real
PostgreSQL.

Oracles (tests/coordinator/shard_reference.py): a robust round's committed model (and the
robust state it carries) equals, bit for bit, the single-machine aggregator fed the stored
updates in (shard, seq) order; a DP round's equals the plain-loop clipped per-shard sums,
merged, plus N(0, (zS)^2) drawn once from (seed, round). The noise's standard deviation on
the merged sum is checked statistically; the ledger's ε and the refused round against
dp-accounting called directly (tests/coordinator/test_dp.py's _direct), and the refused round
against a single coordinator too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.robust.aggregators import RobustConfig
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.coordinator.sharding.config import ShardConflict
from fedge.tools.cli import main
from tests.coordinator.fleet import ManualDevice, make_fleet, pin_noise_keys, random_delta
from tests.coordinator.shard_reference import dp_reference, robust_reference
from tests.coordinator.test_dp import _direct
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.sharding.replay import ReplayMismatch  # noqa: E402
from tests.coordinator.test_sharding import Cluster, K  # noqa: E402

S = 0.05  # the DP clip: the tiny model's random deltas below are around it, some clipped
POISON = 10.0  # every coordinate of a poisoned delta; honest ones are ~0.01


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _privacy(**kw) -> PrivacyConfig:
    return PrivacyConfig(**{"enabled": True, "noise_multiplier": 1.0, "clip_norm": S, "target_epsilon": 1e4,
                            "delta": 1e-5, **kw})


DP = {"aggregator": "mean", "weighting": "equal"}


def test_shards_take_robust_rules_and_central_dp_and_refuse_the_rest_by_name():
    ok = dict(shards=2, state_dsn="postgresql://x@127.0.0.1/db")
    for agg in ("norm_bound", "median", "trimmed_mean", "krum", "centered_clipping"):
        assert CoordinatorConfig(**ok, aggregator=agg).aggregator == agg
    assert CoordinatorConfig(**ok, **DP, privacy=_privacy()).privacy.enabled
    secagg = {**DP, "secure_aggregation": SecAggConfig(enabled=True, clip_range=1.0)}
    # secure aggregation and its distributed DP run per shard group (test_sharding_secagg.py)
    assert CoordinatorConfig(**ok, **secagg).secure_aggregation.enabled
    for change, reason in [({**DP, "privacy": _privacy(target_quantile=0.5)}, "shards_adaptive_clip"),
                           ({"strategy": "scaffold"}, "shards_scaffold")]:
        with pytest.raises(ShardConflict) as info:
            CoordinatorConfig(**ok, **change)
        assert info.value.reason == reason


# ---------------------------------------------------------------- robust rules


def _poisoned(c: Cluster, rng, poisoned: set[str], update_id: str) -> None:
    for d in c.devices:
        delta = random_delta(c.shapes, rng)
        if d.id in poisoned:
            delta = {k: np.full_like(v, POISON) for k, v in delta.items()}
        c.upload(d, delta, update_id)
    c.pump()


@pytest.mark.parametrize("aggregator,robust", [
    ("median", RobustConfig()), ("trimmed_mean", RobustConfig()), ("krum", RobustConfig()),
    ("norm_bound", RobustConfig()), ("centered_clipping", RobustConfig(cc_tau=0.1)),  # tau 0: the mean at first
    ("median", RobustConfig(bucket_size=2))])
def test_a_robust_rule_on_shards_commits_what_one_machine_computes_from_the_stored_updates(
        model, postgres_dsn, aggregator, robust):
    c = Cluster(model, postgres_dsn, devices=10, aggregator=aggregator, robust=robust)
    poisoned = {c.devices[1].id, c.devices[6].id}
    rng = np.random.default_rng(4)
    for round_no in (1, 2):  # round 2 starts from round 1's carried state (norm history, center)
        old = c.leader.state
        assert c.leader.begin_round()
        c.pump()
        _poisoned(c, rng, poisoned, f"u{round_no}")
        record = c.leader.tick()
        assert record is not None and record.committed, record
        want, counted = robust_reference(c.rows, record.round_id, old, c.strategy, len(c.devices), c.cfg)
        assert counted == 10 and len({r[0] for r in c.rows("SELECT DISTINCT shard FROM shard_updates")}) == K
        got = c.leader.state
        for k in want.params:
            assert np.array_equal(got.params[k], want.params[k]), (aggregator, round_no, k)
        assert got.extra.keys() == want.extra.keys()
        for group in want.extra:
            for name, value in want.extra[group].items():
                assert np.array_equal(got.extra[group][name], value), (group, name)
        # The poison is resisted: a plain mean of the same stored updates moves every coordinate by
        # about 2 / 10 * POISON; the robust rule keeps the model near the honest deltas.
        moved = max(float(np.max(np.abs(got.params[k] - old.params[k]))) for k in old.params)
        assert moved < 0.2, (aggregator, round_no, moved)


def test_the_leader_refuses_to_aggregate_stored_updates_the_sums_did_not_count(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, devices=4, aggregator="median")
    assert c.leader.begin_round()
    c.pump()
    _poisoned(c, np.random.default_rng(1), set(), "u1")
    # a row that says another shard counted it: the per-shard tally no longer matches the sums
    c.rows("UPDATE shard_updates SET shard = 1 - shard WHERE device_id = %s RETURNING 1", c.devices[0].id)
    with pytest.raises(ReplayMismatch):
        c.leader.tick()
    assert c.leader.state.version == 0


def test_the_leader_refuses_stored_payloads_whose_bytes_changed(model, postgres_dsn):
    from fedge.coordinator.errors import StoreCorrupt

    c = Cluster(model, postgres_dsn, devices=4, aggregator="median")
    assert c.leader.begin_round()
    c.pump()
    _poisoned(c, np.random.default_rng(1), set(), "u1")
    # one stored payload changed in place, same length: its digest no longer matches
    c.rows("UPDATE shard_updates SET payload = set_byte(payload, 40, get_byte(payload, 40) # 1) "
           "WHERE device_id = %s RETURNING 1", c.devices[0].id)
    with pytest.raises(StoreCorrupt, match="digest"):
        c.leader.tick()
    assert c.leader.state.version == 0


# ---------------------------------------------------------------- central DP


def test_dp_on_shards_noises_the_merged_clipped_sum_once_and_charges_the_ledger(model, postgres_dsn, capsys):
    z, rounds = 1.0, 8
    c = Cluster(model, postgres_dsn, devices=8, **DP, privacy=_privacy(noise_multiplier=z))
    # Not the OS's keys: the variance check below is a two-sided chi-square test on 8 x 67 draws,
    # which noise of the right std fails 1.4e-4 of the time (scipy.stats.chi2 at n = 536).
    pin_noise_keys(c.leader)
    rng = np.random.default_rng(12)
    residuals = []
    for round_no in range(1, rounds + 1):
        old = c.leader.state
        assert c.leader.begin_round()
        # the open round's plan, noise key included: the close forgets the key (stored.closed_plan)
        plan = json.loads(json.dumps(c.leader.round.privacy.to_json()))
        c.pump()
        for i, d in enumerate(c.devices):  # norms from ~S/4 to ~4 S: about half are clipped by the workers
            c.upload(d, random_delta(c.shapes, rng, scale=S * 0.04 * 4.0 ** (i % 3 - 1)), f"u{round_no}")
        c.pump()
        record = c.leader.tick()
        assert record is not None and record.committed, record
        (closed,) = c.rows("SELECT privacy FROM rounds WHERE round_id = %s", record.round_id)[0]
        assert len(plan["noise_key"]) == 32  # and the closed row holds the plan less it
        assert json.loads(closed) == {k: v for k, v in plan.items() if k != "noise_key"}
        want, clipped_sum, counted = dp_reference(c.rows, K, record.round_id, old, c.strategy, len(c.devices), plan,
                                                  c.cfg.seed)
        assert counted == 8
        for k in want:
            assert np.array_equal(c.leader.state.params[k], want[k]), (round_no, k)
        # what the committed model says the noise was: (new - old) * W - the clipped sum
        residuals += [((c.leader.state.params[k].astype(np.float64) - old.params[k]) * plan["expected_cohort"]
                       - clipped_sum[k]).ravel() for k in clipped_sum]
    # One N(0, (zS)^2) per coordinate: the sample variance is within a chi-square 99.99% interval
    # (n coordinates: relative half-width ~ 3.9 sqrt(2 / n)). Noise per shard would be K (zS)^2.
    noise = np.concatenate(residuals)
    n = noise.size
    half = 3.9 * np.sqrt(2 / n)
    variance = float(np.mean(noise ** 2)) / (z * S) ** 2
    assert abs(variance - 1) < half, (variance, n)
    assert abs(variance - K) > half  # the check would catch noise drawn once per shard
    ledger = c.store.privacy_ledger()
    assert len(ledger) == rounds
    for r, charge in enumerate(ledger, 1):
        assert (charge["population"], charge["cohort"]) == (8, 8)
        assert charge["epsilon_after"] == pytest.approx(_direct("fixed", 8, 8, z, r, 1e-5), abs=1e-6)
    assert main(["coordinator", "privacy", "--state", postgres_dsn, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rounds_charged"] == rounds and len(report["rounds"]) == rounds
    assert report["epsilon_spent"] == pytest.approx(_direct("fixed", 8, 8, z, rounds, 1e-5), abs=1e-6)
    assert main(["coordinator", "privacy", "--state-dsn", postgres_dsn]) == 0
    assert f"over {rounds} rounds" in capsys.readouterr().out


def test_the_privacy_command_reads_a_postgres_database_no_coordinator_opened(postgres_dsn, capsys):
    assert main(["coordinator", "privacy", "--state-dsn", postgres_dsn]) == 0
    assert "no round charged" in capsys.readouterr().out
    assert main(["coordinator", "privacy", "--state", "postgresql://fedge:secret@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the privacy ledger" in err and "secret" not in err


def _refused_round(population: int, cohort: int, z: float, target: float) -> int:
    refused = 1
    while _direct("fixed", population, cohort, z, refused, 1e-5) <= target:
        refused += 1
    return refused


def test_the_budget_refuses_the_same_round_on_shards_as_on_one_machine(model, postgres_dsn, tmp_path):
    population, wanted, z = 12, 6, 2.0
    # a target between rounds 2 and 3's ε: dp-accounting refuses round 3
    target = (_direct("fixed", population, wanted, z, 2, 1e-5) + _direct("fixed", population, wanted, z, 3, 1e-5)) / 2
    refused = _refused_round(population, wanted, z, target)
    assert refused == 3
    cfg = dict(clients_per_round=wanted, min_reports=wanted, **DP,
               privacy=_privacy(noise_multiplier=z, target_epsilon=target))
    c = Cluster(model, postgres_dsn, devices=population, **cfg)
    rng = np.random.default_rng(3)
    for _ in range(refused + 1):  # bounded: a round that is never charged would never be refused
        if not c.leader.begin_round():
            break
        c.pump()
        chosen = set(c.leader.round.machine.selected)
        for d in c.devices:
            if d.id in chosen:
                c.upload(d, random_delta(c.shapes, rng), f"r{c.leader.round.ctx.round_id}")
        c.pump()
        assert c.leader.tick().committed
    sharded = c.leader
    assert sharded.state.version == refused - 1 == len(sharded.store.privacy_ledger())
    assert sharded.privacy.exhausted.epsilon_after == pytest.approx(
        _direct("fixed", population, wanted, z, refused, 1e-5), abs=1e-6)
    assert sharded.store.next_round_id() == refused and sharded.round is None
    # one machine, the same fleet and settings: refused at the same round
    fleet = make_fleet(model, tmp_path, **cfg)
    devices = [ManualDevice(fleet, f"d{i:02d}", 10) for i in range(population)]
    fleet.drain()
    one = fleet.coordinator
    for _ in range(refused + 1):
        if not one.begin_round():
            break
        fleet.drain()
        for m in devices:
            if m.id in set(one.round.machine.selected):
                m.send(_encoded(m, random_delta(one.shapes, rng), f"r{one.round.ctx.round_id}"))
        fleet.drain()
        assert one.tick().committed
    assert one.state.version == sharded.state.version and one.next_round_id == refused
    assert one.privacy.exhausted.epsilon_after == sharded.privacy.exhausted.epsilon_after


def _encoded(device: ManualDevice, delta, update_id: str) -> bytes:
    from fedge.edge_runtime.kernel.codec import encode_message

    return encode_message(device.update(delta, update_id=update_id))


def test_a_sharded_dp_round_abandoned_after_a_worker_counted_an_update_is_charged(model, postgres_dsn):
    """The rule of test_dp_abandoned_charge.py on shards: the leader's aggregator counts nothing
    before its seal, so a sharded round abandoned after a worker counted an update went uncharged."""
    c = Cluster(model, postgres_dsn, devices=2, min_reports=2, **DP, privacy=_privacy())
    assert c.leader.begin_round()
    c.pump()
    c.upload(c.devices[0], random_delta(c.shapes, np.random.default_rng(5), scale=S * 0.1))
    c.pump()
    assert c.leader.tick() is None  # the poll: one of the two reported
    assert len(c.leader.round.machine.reported) == 1
    c.clock.advance(c.cfg.round_deadline_s + 1)
    record = c.leader.tick()
    assert record is not None and not record.committed
    assert [e["cohort"] for e in c.store.privacy_ledger()] == [2]
