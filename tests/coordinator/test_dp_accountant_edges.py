"""The accountant's two boundaries (coordinator/dp/accountant.py): check_round refuses only when
ε after the round would *exceed* the target (a round landing exactly on it runs), and
rounds_left counts up to its limit inclusive when the limit is a power of two, where its
doubling search lands on it. Oracles: epsilon() itself and a plain loop over round counts."""

from __future__ import annotations

from fedge.coordinator.dp.accountant import RoundCharge, check_round, epsilon, rounds_left

CHARGE = RoundCharge(1000, 100, 1.0, "poisson")


def test_a_round_that_lands_exactly_on_the_target_runs_and_one_past_it_is_refused():
    ledger = [CHARGE] * 2
    after = epsilon([*ledger, CHARGE], 1e-5)
    verdict = check_round(ledger, CHARGE, after, 1e-5)
    assert verdict.allowed and verdict.epsilon_after == after
    assert verdict.epsilon_spent == epsilon(ledger, 1e-5) < after
    below = check_round(ledger, CHARGE, after * (1 - 1e-9), 1e-5)
    assert not below.allowed and "privacy budget" in below.why


def test_rounds_left_reaches_a_limit_that_is_a_power_of_two():
    """A budget roomy enough for 9 more rounds, searched up to 8: the doubling search's 1, 2, 4, 8
    lands on the limit, which fits, so the count is 8 (it once stopped short of it, at 7)."""
    ledger, target = [CHARGE], epsilon([CHARGE] * 10, 1e-5)
    # the oracle: ε grows with each round; 9 more fit and a 10th does not
    assert epsilon([CHARGE] * 10, 1e-5) <= target < epsilon([CHARGE] * 11, 1e-5)
    assert rounds_left(ledger, CHARGE, target, 1e-5, limit=8) == 8
