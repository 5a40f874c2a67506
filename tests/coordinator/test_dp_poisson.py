"""Poisson sampling under central DP (coordinator/sampling.py, server.begin_round, records.charge):
each eligible device is drawn independently with q = asked / eligible, the draw's size varies,
the budget refuses the first round dp-accounting's PoissonSampledDpEvent (called directly) says
exceeds the target, a Poisson round is charged however it ends, and what it is not built for is
refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.sampling import poisson_draw, poisson_sample
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.coordinator.test_dp import _direct
from tests.coordinator.test_dp_rounds import DP, _manual_round, _privacy, _round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_each_device_is_drawn_independently_at_the_rate():
    """Oracle: over 400 draws of 500 devices at q = 0.1, every device's inclusion count is
    Binomial(400, 0.1) (mean 40, sd 6) and the draw sizes Binomial(500, 0.1) (mean 50, sd 6.7)."""
    devices = [f"d{i:03d}" for i in range(500)]
    draws = [poisson_sample(devices, 0.1, seed=7, round_id=r) for r in range(400)]
    sizes = np.array([len(d) for d in draws])
    assert abs(sizes.mean() - 50) < 5 * 6.7 / np.sqrt(400) and sizes.std() == pytest.approx(6.7, rel=0.2)
    counts = np.array([sum(device in set(d) for d in draws) for device in devices[:50]])
    assert abs(counts.mean() - 40) < 5 * 6 / np.sqrt(50) and counts.min() > 40 - 5 * 6 and counts.max() < 40 + 5 * 6
    assert poisson_sample(devices, 0.1, 7, 3) == draws[3]  # reproducible from (seed, round)
    assert poisson_sample(devices, 0.1, 7, 3, attempt=1) != draws[3]
    assert poisson_sample(devices, 1.0, 7, 3) == sorted(devices)
    with pytest.raises(ValueError, match="rate"):
        poisson_sample(devices, 0.0, 7, 3)


def test_an_empty_draw_is_drawn_again():
    devices = ["a", "b", "c"]
    round_id = next(r for r in range(1000) if not poisson_sample(devices, 0.2, 1, r))
    assert poisson_draw(devices, 0.2, 1, round_id) == next(
        d for a in range(64) if (d := poisson_sample(devices, 0.2, 1, round_id, a)))


def test_poisson_refuses_async_mode_by_name():
    with pytest.raises(ConfigError, match="mode = 'sync'"):
        CoordinatorConfig(**{**DP, "privacy": _privacy(sampling="poisson"), "mode": "async"})


@pytest.mark.parametrize("restart", [False, True])
def test_the_budget_refuses_the_first_round_the_poisson_event_says_exceeds_it(model, tmp_path, restart):
    """ε = 3, z = 1.0, δ = 1e-5, 100 wanted of 1,000 eligible with over-selection 1.3: q = 130 / 1000,
    as dp-accounting's PoissonSampledDpEvent (add-or-remove-one, sensitivity S) charges it."""
    population, wanted, asked, z = 1000, 100, 130, 1.0
    refused = 1
    while _direct("poisson", population, asked, z, refused, 1e-5) <= 3.0:
        refused += 1
    store = RoundStore(tmp_path / "state.db")
    fleet = make_fleet(model, tmp_path, store=store, clients_per_round=wanted, over_selection=1.3,
                       min_reports=wanted, **DP, privacy=_privacy(target_epsilon=3.0, noise_multiplier=z,
                                                                  sampling="poisson"))
    devices = [ManualDevice(fleet, f"d{i:04d}", 10) for i in range(population)]
    rng = np.random.default_rng(0)
    fleet.drain()
    sizes = []
    while fleet.coordinator.begin_round():
        selected = fleet.coordinator.round.machine.selected
        assert selected == tuple(poisson_sample([d.id for d in devices], asked / population, 0,
                                                fleet.coordinator.round.ctx.round_id))
        sizes.append(len(selected))
        assert fleet.coordinator.round.privacy.expected_cohort == wanted  # the fixed denominator stays W
        assert _manual_round(fleet, devices, rng).committed
        if restart:
            fleet.restart(store=RoundStore(tmp_path / "state.db"))
            fleet.drain()
    c = fleet.coordinator
    ledger = c.store.privacy_ledger()
    assert len(ledger) == refused - 1 == c.state.version and len(set(sizes)) > 1  # the cohort's size varied
    assert all((e["population"], e["cohort"], e["sampling"]) == (population, asked, "poisson") for e in ledger)
    assert c.privacy.exhausted.epsilon_after == pytest.approx(_direct("poisson", population, asked, z, refused,
                                                                      1e-5), abs=1e-6)
    assert c.store.next_round_id() == refused and c.round is None


def test_a_poisson_round_is_charged_even_when_abandoned(model, tmp_path):
    """Unlike a fixed-size round (test_dp_rounds.py), whose abandonment before the noised sum is
    free: whether a Poisson round reaches its quorum depends on the draw's size."""
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, round_deadline_s=5.0,
                       store=RoundStore(tmp_path / "s.db"), **DP, privacy=_privacy(sampling="poisson"))
    for i in range(4):
        ManualDevice(fleet, f"m{i}", 10)
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    record = _round(fleet)  # nobody answers
    assert not record.committed
    assert [(e["cohort"], e["sampling"]) for e in c.store.privacy_ledger()] == [(2, "poisson")]


DISTRIBUTED = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=1.0, clip_norm=0.05,
                            target_epsilon=50.0, delta=1e-5, sampling="poisson")
SECURE = dict(secure_aggregation=SecAggConfig(enabled=True, bits=16, clip_range=0.05), weighting="equal",
              aggregator="mean", compression=CompressionSpec(quant_bits=32), privacy=DISTRIBUTED,
              clients_per_round=5, min_reports=3)
SIZES = (12, 20, 16, 24, 18, 14, 22, 10)


def _seed_with_draw(test) -> int:
    """A coordinator seed whose round-1 Poisson draw (5 of 8 devices) passes `test` on its size."""
    ids = [f"dev{i}" for i in range(len(SIZES))]
    return next(seed for seed in range(1000) if test(len(poisson_draw(ids, 5 / 8, seed, 1))))


def test_a_distributed_poisson_round_noises_for_the_draw_it_got(model, tmp_path):
    from fedge.coordinator.dp.distributed import params_for
    from fedge.edge_runtime.kernel.secagg.messages import SecAggTask
    from tests.coordinator.test_dp_distributed import _run_round
    seed = _seed_with_draw(lambda k: 3 <= k < 5)  # fewer than asked, at least the quorum
    fleet = make_fleet(model, tmp_path, sizes=SIZES, seed=seed, **SECURE)
    c = fleet.coordinator
    record = _run_round(fleet, SECURE["secure_aggregation"].stage_deadline_s)
    drawn = len(poisson_draw([f"dev{i}" for i in range(len(SIZES))], 5 / 8, seed, 1))
    assert record.committed, record.why
    (task,) = {m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    d = sum(int(np.prod(s)) for s in c.shapes.values())
    expected = params_for(1.0, 0.05, 0.05, d, min(3, drawn), drawn, 16)  # quorum and field for the draw
    assert (task.dp_gamma, task.dp_sigma) == (expected.gamma, expected.sigma)
    (charge,) = c.store.privacy_ledger()
    assert (charge["sampling"], charge["mechanism"], charge["cohort"], charge["population"]) == \
        ("poisson", "distributed", 5, 8)


def test_a_secure_poisson_draw_below_the_quorum_is_abandoned_before_any_task_and_charged(model, tmp_path):
    from fedge.coordinator.loop import CoordinatorLoop
    seed = _seed_with_draw(lambda k: 1 <= k < 3)
    fleet = make_fleet(model, tmp_path, sizes=SIZES, seed=seed, store=RoundStore(tmp_path / "s.db"), **SECURE)
    c = fleet.coordinator
    loop = CoordinatorLoop(c, min_devices=len(SIZES))
    loop._maybe_begin()  # what the service does: the loop gets the record as from tick()
    assert c.round is None and loop._closed_at_begin is c.history[-1]
    record = c.history[-1]
    assert not record.committed and record.why.startswith("poisson_draw_below_quorum")
    fleet.drain()
    from fedge.edge_runtime.kernel.secagg.messages import SecAggTask
    assert fleet.tasks() == [] and not any(isinstance(m, SecAggTask) for m in fleet.wire)
    assert c.store.next_round_id() == 2
    assert [(e["sampling"], e["mechanism"]) for e in c.store.privacy_ledger()] == [("poisson", "distributed")]
