"""Wrong unmask shares: a share past t that is off the polynomial of the first t is named
(shamir.InconsistentShares), and recovery.wrong_holders names the one holder whose shares explain
every failing secret, never an honest holder that colluders' wrong shares would frame."""

from __future__ import annotations

import random

import pytest

from fedge.edge_runtime.kernel.secagg import shamir
from fedge.edge_runtime.kernel.secagg.recovery import wrong_holders

T = 3


def _seed(rng: random.Random) -> bytes:
    return shamir.random_secret(rng.randbytes)


@pytest.mark.parametrize("packing", [1, 2])
def test_a_share_off_the_polynomial_is_named_wherever_it_sits(packing):
    rng = random.Random(packing)
    seed, points = _seed(rng), list(range(1, 9))
    values = shamir.share_seed(seed, 4, points, packing, randbelow=rng.randrange)
    shares = list(zip(points, values))
    assert shamir.recover_seed(shares, 4, packing) == seed  # all eight on one polynomial
    assert shamir.recover_seed(shares[:4], 4, packing) == seed
    for bad in (0, 3, 4, 7):  # among the t used, or a spare
        wrong = list(shares)
        wrong[bad] = (points[bad], values[(bad + 1) % 8])  # a field element, another point's
        with pytest.raises(shamir.InconsistentShares, match="off the polynomial"):
            shamir.recover_seed(wrong, 4, packing)
        if bad >= 4:  # unused and unchecked when only t are given
            assert shamir.recover_seed(wrong[:4], 4, packing) == seed


def _answers(cohort, holders_of, wrong=(), rng=None):
    """holder -> owner -> ("self", share): each owner's seed shared to the holders `holders_of`
    names; a (holder, owner) pair in `wrong` answers with another holder's value."""
    rng = rng or random.Random(0)
    point = {d: i + 1 for i, d in enumerate(sorted(cohort))}
    answers: dict[str, dict] = {}
    for owner, holders in holders_of.items():
        xs = [point[h] for h in holders]
        values = shamir.share_seed(_seed(rng), T, xs, 1, randbelow=rng.randrange)
        for i, h in enumerate(holders):
            v = values[(i + 1) % len(values)] if (h, owner) in wrong else values[i]
            answers.setdefault(h, {})[owner] = ("self", v)
    return answers


def test_the_one_holder_with_wrong_shares_is_named():
    cohort = tuple(f"d{i}" for i in range(6))
    answers = _answers(cohort, {o: cohort for o in cohort}, wrong={("d2", o) for o in cohort})
    assert wrong_holders(answers, cohort, T, cohort, (), 1, None) == {"d2"}
    assert wrong_holders(_answers(cohort, {o: cohort for o in cohort}), cohort, T, cohort, (), 1, None) == set()


def test_colluders_cannot_have_an_honest_holder_named():
    """A wrongs o1 and B wrongs o2, each of which has t + 1 shares, and honest H holds both:
    leaving H out leaves exactly t of each, which give some seed whatever they hold. That is no
    evidence, so no one is named (the round is abandoned), not H."""
    cohort = ("A", "B", "H", "o1", "o2", "x", "y", "z", "w")
    holders_of = {"o1": ("A", "H", "x", "y"), "o2": ("B", "H", "z", "w")}
    answers = _answers(cohort, holders_of, wrong={("A", "o1"), ("B", "o2")})
    assert wrong_holders(answers, cohort, T, ("o1", "o2"), (), 1, None) == set()
    # with a spare share more, the evidence is there: each failing secret names its own holder,
    # and no single holder explains both
    holders_of = {"o1": ("A", "H", "x", "y", "z"), "o2": ("B", "H", "z", "w", "x")}
    answers = _answers(cohort, holders_of, wrong={("A", "o1"), ("B", "o2")})
    assert wrong_holders(answers, cohort, T, ("o1", "o2"), (), 1, None) == set()
    # A alone wrong: leaving it out leaves t + 1 of o1 on one polynomial, which two colluders (x
    # and y, moving it through H and z) could have put there with A honest: still no evidence
    answers = _answers(cohort, holders_of, wrong={("A", "o1")})
    assert wrong_holders(answers, cohort, T, ("o1", "o2"), (), 1, None) == set()
    # t + LIARS on one polynomial are evidence: another passes t - 1 honest shares at most, so LIARS + 1 would be lies
    holders_of["o1"] += ("w",)
    answers = _answers(cohort, holders_of, wrong={("A", "o1")})
    assert wrong_holders(answers, cohort, T, ("o1", "o2"), (), 1, None) == {"A"}
