"""The ledger's composition kept between checks (dp/compose.py): ε the same as dp-accounting
composing the ledger directly, warm or cold, and a grown ledger composes only its new rounds."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedge.coordinator.dp import compose
from fedge.coordinator.dp.accountant import RoundCharge, epsilon


def _direct(charges, delta, method):
    """dp-accounting by hand, runs of equal rounds as one compose with their count; fixed-size:
    the smaller of the sampled and the plain Gaussian bound (accountant.epsilon's docstring)."""
    fixed = charges[0].sampling == "fixed"
    relation = dpa.NeighboringRelation.REPLACE_ONE if fixed else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=relation) if method == "rdp" else pld.PLDAccountant(relation)
    plain = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    i = 0
    while i < len(charges):
        c, n = charges[i], 1
        while i + n < len(charges) and charges[i + n] == c:
            n += 1
        i += n
        if fixed:
            acc.compose(dpa.SampledWithoutReplacementDpEvent(c.population, c.cohort,
                                                             dpa.GaussianDpEvent(c.noise_multiplier / 2)), n)
            plain.compose(dpa.GaussianDpEvent(c.noise_multiplier / 2), n)
        else:
            acc.compose(dpa.PoissonSampledDpEvent(c.cohort / c.population, dpa.GaussianDpEvent(c.noise_multiplier)), n)
    return min(acc.get_epsilon(delta), plain.get_epsilon(delta)) if fixed else acc.get_epsilon(delta)


def _mixed(sampling, rounds, zs=(1.0, 1.4, 0.8)):
    """Populations, cohorts and z that move, with runs of equal rounds among them."""
    return [RoundCharge(1000 + (i // 3) % 4, 40 + (i // 2) % 3, zs[(i // 5) % 3], sampling)
            for i in range(rounds)]


@pytest.mark.parametrize("sampling,method,rounds", [("poisson", "rdp", 16), ("fixed", "rdp", 10),
                                                    ("poisson", "pld", 8)])
def test_epsilon_of_a_growing_mixed_ledger_matches_dp_accounting_warm_and_cold(sampling, method, rounds):
    ledger = _mixed(sampling, rounds, (1.0, 1.4, 0.8) if method == "rdp" else (3.0, 4.0, 2.5))  # PLD: fast z
    compose.forget()
    warm = [epsilon(ledger[:n], 1e-6, method) for n in range(1, rounds + 1)]  # as the coordinator asks
    compose.forget()  # a restart: nothing kept
    assert epsilon(ledger, 1e-6, method) == warm[-1]
    for n in (1, rounds // 2, rounds):
        assert warm[n - 1] == pytest.approx(_direct(ledger[:n], 1e-6, method), rel=1e-9, abs=1e-12)


def test_ledgers_that_share_a_start_but_differ_later_do_not_share_their_composition():
    ledger = _mixed("poisson", 12)
    other = [*ledger[:6], *[RoundCharge(5000, 10, 2.0, "poisson")] * 6]
    compose.forget()
    epsilon(ledger, 1e-6)
    assert epsilon(other, 1e-6) == pytest.approx(_direct(other, 1e-6, "rdp"), rel=1e-9)
    assert epsilon(ledger[:4], 1e-6) == pytest.approx(_direct(ledger[:4], 1e-6, "rdp"), rel=1e-9)


@pytest.mark.parametrize("method", ["rdp", "pld"])
def test_a_grown_ledger_composes_only_its_new_rounds(method, monkeypatch):
    """Before each round the coordinator asks ε of the ledger and of it with the proposed round;
    a ledger of rounds that all differ was composed round by round every time (200 rounds: 200
    compose calls per check, seconds with RDP, over a minute with PLD)."""
    ledger = [RoundCharge(1000 + i, 50, 3.0, "poisson") for i in range(40)]
    compose.forget()
    epsilon(ledger[:39], 1e-6, method)
    calls = []
    real = dpa.PrivacyAccountant.compose
    monkeypatch.setattr(dpa.PrivacyAccountant, "compose", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    epsilon(ledger, 1e-6, method)
    assert len(calls) <= 2
