"""Reed-Solomon decoding over the Shamir field (decode.py) and the dealer rule built on it
(recovery.wrong_dealers): a dealer whose shares fit no polynomial, or give a mask key it did not
advertise, is named; an honest one is not, whatever up to (h - t) // 2 of its holders answer,
nor whatever two of them do (recovery.LIARS) at the small cohorts where that is more."""

from __future__ import annotations

import itertools
import random

import pytest

from fedge.edge_runtime.kernel.secagg import shamir
from fedge.edge_runtime.kernel.secagg.decode import decode
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, packing_for, threshold_for
from fedge.edge_runtime.kernel.secagg.keys import generate_keypair, keypair_from_seed
from fedge.edge_runtime.kernel.secagg.recovery import LIARS, wrong_dealers
from fedge.edge_runtime.kernel.secagg.session import point_of

P = shamir.PRIME


def _poly(rng, t):
    return [rng.randrange(P) for _ in range(t)]


def _at(coeffs, x, prime=P):
    return sum(c * pow(x, j, prime) for j, c in enumerate(coeffs)) % prime


def _brute_force(points, t, prime):
    """Every polynomial through some t of the points that all but (n - t) // 2 of them lie on."""
    e = (len(points) - t) // 2
    found = set()
    for subset in itertools.combinations(points, t):
        xs = [x for x, _ in subset]
        coeffs = [0] * t  # Lagrange into coefficients, the slow plain way
        for j, (xj, yj) in enumerate(subset):
            basis, denom = [1], 1
            for m, xm in enumerate(xs):
                if m != j:
                    basis = [(a - xm * b) % prime for a, b in zip([0] + basis, basis + [0])]
                    denom = denom * (xj - xm) % prime
            scale = yj * pow(denom, -1, prime) % prime
            coeffs = [(c + scale * b) % prime for c, b in zip(coeffs, basis)]
        if sum(_at(coeffs, x, prime) != y for x, y in points) <= e:
            found.add(tuple(coeffs))
    return found


@pytest.mark.parametrize("seed", range(30))
def test_the_polynomial_comes_back_with_up_to_e_errors_and_none_past_what_it_can_tell(seed):
    rng = random.Random(seed)
    prime = rng.choice([P, 101])  # a small field too, where chance agreements happen
    t, n = rng.randint(1, 4), 0
    n = rng.randint(t, t + 5)
    coeffs = _poly(rng, t) if prime == P else [rng.randrange(prime) for _ in range(t)]
    xs = rng.sample(range(1, min(prime, 60)), n)
    points = [(x, _at(coeffs, x, prime)) for x in xs]
    for i in rng.sample(range(n), rng.randint(0, n)):  # any number of wrong values, even past e
        points[i] = (points[i][0], (points[i][1] + rng.randrange(1, prime)) % prime)
    got = decode(points, t, prime)
    oracle = _brute_force(points, t, prime)
    assert oracle == ({tuple(got)} if got is not None else set())
    wrong = sum(_at(coeffs, x, prime) != y for x, y in points)
    if wrong <= (n - t) // 2:
        assert got == coeffs


def _answers(owner_shares):
    """holder -> owner -> (kind, value) from owner -> (kind, {holder: value})."""
    out: dict[str, dict] = {}
    for owner, (kind, values) in owner_shares.items():
        for holder, v in values.items():
            out.setdefault(holder, {})[owner] = (kind, v)
    return out


COHORT = tuple(f"d{i}" for i in range(9))
POINT = {d: i + 1 for i, d in enumerate(COHORT)}
T = 3


def _dealt(rng, seed, holders, packing):
    values = shamir.share_seed(seed, T, [POINT[h] for h in holders], packing, randbelow=rng.randrange)
    return dict(zip(holders, values))


def _wrong_value(rng, packing):
    return rng.randrange(P) if packing == 2 else (rng.randrange(P) << 64) | rng.randrange(P)


@pytest.mark.parametrize("packing", [1, 2])
def test_an_honest_dealer_is_not_named_whatever_up_to_e_holders_answer(packing):
    rng = random.Random(packing)
    holders = COHORT[1:]  # h = 8, t = 3: e = 2
    for liars in itertools.combinations(holders, 2):
        key_seed = shamir.random_secret(rng.randbytes)
        shares = {"d0": ("mask", _dealt(rng, key_seed, holders, packing))}
        for h in liars:
            shares["d0"][1][h] = _wrong_value(rng, packing)
        publics = {"d0": keypair_from_seed(key_seed).public}
        assert wrong_dealers(_answers(shares), COHORT, T, (), ("d0",), packing, publics) == set()
        self_shares = {"d0": ("self", dict(shares["d0"][1]))}
        assert wrong_dealers(_answers(self_shares), COHORT, T, ("d0",), (), packing, None) == set()


def _honest_others(rng, packing):
    """d1..d4 alive, each dealt honestly to every other device: so each holder answers for
    several owners, as in a round."""
    return {o: ("self", _dealt(rng, shamir.random_secret(rng.randbytes), [h for h in COHORT if h != o], packing))
            for o in COHORT[1:5]}


@pytest.mark.parametrize("packing", [1, 2])
def test_a_dealer_of_no_polynomial_or_of_another_key_is_named(packing):
    rng = random.Random(10 + packing)
    holders, others = COHORT[1:], COHORT[1:5]
    noise = {"d0": ("self", {h: _wrong_value(rng, packing) for h in holders}), **_honest_others(rng, packing)}
    assert wrong_dealers(_answers(noise), COHORT, T, ("d0", *others), (), packing, None) == {"d0"}
    key_seed = shamir.random_secret(rng.randbytes)
    other = {"d0": ("mask", _dealt(rng, key_seed, holders, packing)), **_honest_others(rng, packing)}
    assert wrong_dealers(_answers(other), COHORT, T, others, ("d0",), packing,  # one polynomial, another key
                         {"d0": generate_keypair().public}) == {"d0"}
    # with fewer than t + 2 shares nothing can be told apart: no one is named
    few = {"d0": ("self", {h: _wrong_value(rng, packing) for h in holders[:T + 1]}), **_honest_others(rng, packing)}
    assert wrong_dealers(_answers(few), COHORT, T, ("d0", *others), (), packing, None) == set()


@pytest.mark.parametrize("packing", [1, 2])
def test_holders_that_lie_about_every_owner_have_no_owner_named(packing):
    """Seven owners, each held by the six others (t = 3, e = 1), and two holders answer noise for
    every owner they hold: every secret fails and none decodes (two errors > e). Naming the
    owners would let two liars sideline the whole cohort; no one is named."""
    rng = random.Random(20 + packing)
    owners = COHORT[:7]
    shares = {o: ("self", _dealt(rng, shamir.random_secret(rng.randbytes), [h for h in owners if h != o], packing))
              for o in owners}
    for _, values in shares.values():
        for liar in ("d5", "d6"):
            if liar in values:
                values[liar] = _wrong_value(rng, packing)
    assert wrong_dealers(_answers(shares), COHORT, T, owners, (), packing, None) == set()


# Cohorts as rounds draw them: (n, k), the graph and t as the coordinator derives them (the
# default complete graphs up to k = 12, and a configured sparse one, packed).
ROUNDS = [(n, n - 1) for n in range(5, 14)] + [(12, 8)]


def _round(n, k, dropped=0):
    """(cohort, t, packing, owner -> its holders among the alive, alive, dropped) of a round."""
    cohort = tuple(f"d{i:02d}" for i in range(n))
    t, packing = threshold_for(k, n), packing_for(k, n)
    graph = neighbour_graph(cohort, k, seed=n)
    alive, gone = cohort[dropped:], cohort[:dropped]
    return cohort, t, packing, {o: [h for h in graph[o] if h in alive] for o in cohort}, alive, gone


def _unmask_answers(rng, cohort, t, packing, holders_of, alive, dropped, victim=None, wrong=()):
    """The unmask answers of a round, each secret dealt as a device deals it (shamir.share_seed
    at session.point_of), and the advertised mask keys of the dropped. The holders in `wrong`
    answer a random value for `victim`'s secret."""
    owner_shares, publics = {}, {}
    for o in alive + dropped:
        seed = shamir.random_secret(rng.randbytes)
        points = [point_of(h, cohort) for h in holders_of[o]]
        values = dict(zip(holders_of[o], shamir.share_seed(seed, t, points, packing, randbelow=rng.randrange)))
        if o == victim:
            values.update({h: _wrong_value(rng, packing) for h in wrong})
        owner_shares[o] = ("self" if o in alive else "mask", values)
        publics[o] = keypair_from_seed(seed).public
    return _answers(owner_shares), {o: publics[o] for o in dropped}


@pytest.mark.parametrize(("n", "k"), ROUNDS)
@pytest.mark.parametrize("dropped", [0, 1])
def test_two_colluding_holders_cannot_have_an_honest_dealer_named(n, k, dropped):
    """Two holders answer wrong shares of one honest device's secret (its self seed, or its mask
    key when it dropped) and right ones of every other: no single holder explains the failure,
    and with e = (h - t) // 2 < 2 their two errors were past what decoding corrects, so the
    honest dealer was named and sidelined (at n = 7, 9, 10 with a dropout, ...): two devices
    could evict any honest one. It is named only past what LIARS colluding holders can fake."""
    rng = random.Random(n * 100 + k + dropped)
    cohort, t, packing, holders_of, alive, gone = _round(n, k, dropped)
    for victim in (alive[0], *gone):
        answers, publics = _unmask_answers(rng, cohort, t, packing, holders_of, alive, gone, victim,
                                           wrong=holders_of[victim][:LIARS])
        assert wrong_dealers(answers, cohort, t, alive, gone, packing, publics) == set(), (n, k, victim)


def _e(t, holders):
    return (len(holders) - t) // 2


@pytest.mark.parametrize(("n", "k"), ROUNDS)
@pytest.mark.parametrize("dropped", [0, 1])
def test_a_dealer_of_wrong_shares_is_named_where_two_liars_cannot_explain_them(n, k, dropped):
    """The reverse: a dealer whose shares fit no polynomial is named where that takes more than
    LIARS liars (e >= LIARS), and a dropped dealer whose shares all fit a polynomial of a mask
    key it did not advertise wherever moving them onto the advertised key's takes more than
    LIARS (h - t + 1 - d > LIARS, d of them off it); elsewhere no one is named (liars could have
    done it)."""
    rng = random.Random(n * 100 + k + dropped)
    cohort, t, packing, holders_of, alive, gone = _round(n, k, dropped)
    answers, publics = _unmask_answers(rng, cohort, t, packing, holders_of, alive, gone, alive[0],
                                       wrong=holders_of[alive[0]])
    named = wrong_dealers(answers, cohort, t, alive, gone, packing, publics)
    assert named == ({alive[0]} if _e(t, holders_of[alive[0]]) >= LIARS else set()), (n, k)
    for victim, liars in itertools.product(gone, (0, 1)):  # and one holder lying about it too
        answers, publics = _unmask_answers(rng, cohort, t, packing, holders_of, alive, gone, victim,
                                           wrong=holders_of[victim][:liars])
        publics[victim] = generate_keypair().public  # the key it advertised is not the one it shared
        named = wrong_dealers(answers, cohort, t, alive, gone, packing, publics)
        assert named == ({victim} if len(holders_of[victim]) - t + 1 - liars > LIARS else set()), (n, k, liars)
