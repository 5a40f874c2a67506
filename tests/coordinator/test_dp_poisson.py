"""Poisson sampling under central DP (coordinator/sampling.py, server.begin_round, records.charge):
each eligible device is drawn independently with q = asked / eligible, the draw's size varies,
the budget refuses the first round dp-accounting's PoissonSampledDpEvent (called directly) says
exceeds the target, a Poisson round is charged however it ends, and what it is not built for is
refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.sampling import poisson_sample
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, noise_entropy, pin_noise_keys
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
    rng = np.random.default_rng([7, 3, 0x9015, 0])  # the stream every version drew (seed, round) from
    assert draws[3] == [d for d, u in zip(sorted(devices), rng.random(len(devices))) if u < 0.1]
    with pytest.raises(TypeError, match="attempt"):  # no redraw, so no attempt to pass
        poisson_sample(devices, 0.1, 7, 3, attempt=1)
    assert poisson_sample(devices, 1.0, 7, 3) == sorted(devices)
    with pytest.raises(ValueError, match="rate"):
        poisson_sample(devices, 0.0, 7, 3)


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
    pin_noise_keys(fleet.coordinator)  # not the OS's keys: two draws of the size may coincide (about 3%)
    while fleet.coordinator.begin_round():
        selected = fleet.coordinator.round.machine.selected
        assert selected == tuple(poisson_sample([d.id for d in devices], asked / population, 0,
                                                fleet.coordinator.round.ctx.round_id,
                                                fleet.coordinator.round.privacy.noise_key))
        sizes.append(len(selected))
        assert fleet.coordinator.round.privacy.expected_cohort == wanted  # the fixed denominator stays W
        assert _manual_round(fleet, devices, rng).committed
        if restart:
            pin_noise_keys(fleet.restart(store=RoundStore(tmp_path / "state.db")))
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
    # q = 2 / 4: with the OS's key the draw is empty 1 time in 16, and an empty draw is a noise-only
    # round that commits (noise_round.py, test_dp_empty_draw.py). Round 1's pinned key draws all 4.
    pin_noise_keys(c)
    assert c.begin_round() and c.round is not None and len(c.round.machine.selected) == 4
    record = _round(fleet)  # nobody answers
    assert not record.committed
    assert [(e["cohort"], e["sampling"]) for e in c.store.privacy_ledger()] == [(2, "poisson")]


@pytest.mark.parametrize("bad,named", [
    ({"mode": "async"}, "mode = 'sync'"),
    ({"shards": 2, "state_dsn": "postgresql://db/fedge"}, "sharded rounds"),
    ({"privacy": _privacy(sampling="poisson", mechanism="distributed"), "clients_per_round": 5, "min_reports": 3,
      "secure_aggregation": SecAggConfig(enabled=True)}, "its own noise share")])
def test_poisson_refuses_what_its_charge_does_not_cover_by_name(bad, named):
    with pytest.raises(ConfigError, match=named):
        CoordinatorConfig(**{**DP, "privacy": _privacy(sampling="poisson"), **bad})


def test_every_drawn_device_counts_and_the_mean_keeps_its_fixed_denominator(model, tmp_path):
    """4 devices, clients_per_round 2, over_selection 2: q = 1, all 4 drawn. A round that closed at
    2 reports would let an added device push out another's (sensitivity 2S); all 4 are counted,
    and the noised sum is divided by W = 2. Oracle from the wire, as test_dp_rounds.py's."""
    from fedge.coordinator.dp.mechanism import clip_to_norm
    from fedge.edge_runtime.kernel.codec import encode_message
    from tests.coordinator.fleet import copy_params, decoded, random_delta
    from tests.coordinator.test_dp_rounds import S
    fleet = make_fleet(model, tmp_path, clients_per_round=2, over_selection=2.0, min_reports=2, **DP,
                       privacy=_privacy(sampling="poisson"))
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(4)]
    fleet.drain()
    c = fleet.coordinator
    old = copy_params(c.state.params)
    assert c.begin_round() and len(c.round.machine.selected) == 4
    key = c.round.privacy.noise_key  # the open round's: its close forgets it (stored.closed_plan)
    fleet.drain()
    rng = np.random.default_rng(4)
    deltas = [random_delta(c.shapes, rng, scale=S) for _ in devices]
    for m, delta in zip(devices, deltas):
        m.send(encode_message(m.update(delta)))
        fleet.drain()
    record = _round(fleet)
    assert record.committed and record.reports == 4
    wire = [decoded(u) for u in fleet.updates()]  # the coordinator sums (and noises) in the wire's key order
    total = {k: sum(clip_to_norm(d, S)[0][k].astype(np.float64) for d in wire) for k in wire[0]}
    noise_rng = np.random.default_rng(noise_entropy(key, c.config.seed, record.round_id))
    noise = {k: noise_rng.normal(0.0, 1.0 * S, size=np.shape(v)) for k, v in total.items()}
    for k in old:
        want = old[k] + ((total[k] + noise[k]) / 2).astype(np.float32)
        np.testing.assert_allclose(c.state.params[k], want, rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_ledger_of_the_other_sampling_stops_the_start_by_name():
    """Switching sampling on an existing state file would make every later round's ε uncomputable
    (one ledger, two neighbouring relations): refused when the budget is built, before any round."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from fedge.coordinator.dp.budget import PrivacyBudget
    from fedge.coordinator.dp.round import RoundPlan
    fixed = RoundPlan(10, 2, 1.0, 0.05, 2, 1e-5, 50.0, 1.0, "fixed").to_json()
    old = {k: v for k, v in fixed.items() if k != "sampling"}  # rows from before the field: fixed
    store = SimpleNamespace(path="state.db", privacy_ledger=lambda: [fixed, old])
    with pytest.raises(ConfigError, match="neighbouring relations differ"):
        PrivacyBudget(_privacy(sampling="poisson"), store, CollectorRegistry())
    assert PrivacyBudget(_privacy(sampling="poisson"), SimpleNamespace(path="state.db", privacy_ledger=lambda: []),
                         CollectorRegistry()).enabled  # a fresh state file takes either
