import math
import random

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import shamir


def _probably_prime(n: int, rounds: int = 40) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    rng = random.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_the_largest_prime_below_2_64_and_shares_take_16_or_8_bytes():
    assert _probably_prime(shamir.PRIME)
    assert not any(_probably_prime(x) for x in range(shamir.PRIME + 1, 2**64))  # the largest: the check says no
    assert shamir.PRIME < 2**64 and shamir.SECRET_BYTES == 16
    assert shamir.value_bytes(1) == 16 and shamir.value_bytes(2) == 8
    with pytest.raises(ValueError, match="packing"):
        shamir.value_bytes(3)


def test_secrets_are_drawn_with_both_halves_below_the_prime_and_one_at_or_above_it_is_refused():
    draws = iter([b"\xff" * 8, shamir.PRIME.to_bytes(8, "big"), bytes(7) + b"\x07", b"\xff" * 8, bytes(7) + b"\x09"])
    assert shamir.random_secret(lambda n: next(draws)) == bytes(7) + b"\x07" + bytes(7) + b"\x09"
    with pytest.raises(ValueError, match="at or above the prime"):
        shamir.share_seed(bytes(8) + shamir.PRIME.to_bytes(8, "big"), 2, [1, 2], packing=1)
    with pytest.raises(ValueError, match="at or above the prime"):
        shamir.share_seed(shamir.PRIME.to_bytes(8, "big") + bytes(8), 2, [1, 2], packing=2)
    for _ in range(200):
        seed = shamir.random_secret()
        assert max(int.from_bytes(seed[:8], "big"), int.from_bytes(seed[8:], "big")) < shamir.PRIME


@pytest.mark.parametrize("packing", [1, 2])
@pytest.mark.parametrize("seed", range(15))
def test_any_t_shares_of_a_seed_give_it_back(seed, packing):
    rng = random.Random(seed)
    k = rng.randint(2, 40)
    t = rng.randint(2, k)
    secret = shamir.random_secret(rng.randbytes)
    points = rng.sample(range(1, 10_000), k)
    values = shamir.share_seed(secret, t, points, packing, randbelow=rng.randrange)
    assert all(shamir.value_in_field(v, packing) for v in values)
    assert all(v < 2 ** (8 * shamir.value_bytes(packing)) for v in values)
    shares = list(zip(points, values))
    for _ in range(5):
        assert shamir.recover_seed(rng.sample(shares, rng.randint(t, k)), t, packing) == secret
    with pytest.raises(ValueError, match=f"need {t}"):
        shamir.recover_seed(shares[:t - 1], t, packing)


@pytest.mark.parametrize("seed", range(5))
def test_packed_reconstruction_agrees_with_a_plain_lagrange_loop_at_0_and_minus_1(seed):
    """The polynomial through t packed shares, evaluated by the textbook formula (pow(., -1, p)
    per term, no batching) at 0 and at -1: the two halves of the seed. Points from 2^20 up take
    the exact path of the denominators."""
    rng = random.Random(seed)
    p = shamir.PRIME
    secret = shamir.random_secret(rng.randbytes)
    for points in (rng.sample(range(1, 2_000), 9), [rng.randrange(2**20, p - 1) for _ in range(9)]):
        values = shamir.share_seed(secret, 9, points, 2, randbelow=rng.randrange)
        at = [sum(y * math.prod((z - xo) * pow(x - xo, -1, p) for xo in points if xo != x)
                  for x, y in zip(points, values)) % p for z in (0, -1)]
        assert at[0].to_bytes(8, "big") + at[1].to_bytes(8, "big") == secret
        assert shamir.recover_seed(list(zip(points, values)), 9, 2) == secret


def test_t_minus_2_packed_shares_are_uniform_whatever_the_seed_and_t_minus_1_are_not():
    """The ramp's two thresholds over the small prime 101, t = 4: the joint distribution of
    t - 2 = 2 shares at fixed points is uniform on the 101^2 pairs for two different seeds
    (chi-square, df = 10200); t - 1 = 3 shares are confined to a plane (101^2 of the 101^3
    triples), a different one for each seed: they tell something, which is why graph.py keeps
    the coordinator at t - 2 of one kind."""
    p, draws, points = 101, 200_000, [4, 9, 20]
    rng = random.Random(3)
    seen = {}
    for s0, s1 in ((0, 0), (77, 5)):
        counts = np.zeros((p, p))
        triples = set()
        for _ in range(draws):
            h = rng.randrange(p), rng.randrange(p)  # t - 2 = 2 random coefficients

            def f(x, h=h, s0=s0, s1=s1):
                return (s0 + (s0 - s1) * x + x * (x + 1) * (h[0] + h[1] * x)) % p
            a, b, c = (f(x) for x in points)
            counts[a, b] += 1
            triples.add((a, b, c))
        expected = draws / p**2
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        df = p**2 - 1
        assert abs(chi2 - df) < 5 * np.sqrt(2 * df), chi2
        seen[(s0, s1)] = triples
    assert not seen[(0, 0)] & seen[(77, 5)]  # three shares tell these seeds apart


def test_the_module_s_packed_polynomial_is_the_one_the_uniformity_test_draws():
    """share_seed's values are f(x) = s0 + (s0 - s1) x + x (x + 1) h(x) with h drawn by randbelow."""
    draws = iter([11, 22, 33])
    secret = (5).to_bytes(8, "big") + (9).to_bytes(8, "big")
    values = shamir.share_seed(secret, 5, [1, 2, 7, 8, 30], 2, randbelow=lambda _: next(draws))
    p = shamir.PRIME
    assert values == [(5 + (5 - 9) * x + x * (x + 1) * (11 + 22 * x + 33 * x * x)) % p for x in (1, 2, 7, 8, 30)]


@pytest.mark.parametrize("seed", range(20))
def test_any_t_shares_reconstruct(seed):
    rng = random.Random(seed)
    k = rng.randint(1, 30)
    t = rng.randint(1, k)
    secret = rng.randrange(shamir.PRIME)
    points = rng.sample(range(1, 10_000), k)
    shares = shamir.split(secret, t, points, randbelow=rng.randrange)
    for _ in range(5):
        subset = rng.sample(shares, rng.randint(t, k))
        assert shamir.reconstruct(subset, t) == secret


def test_fewer_than_t_shares_refuse():
    shares = shamir.split(5, 3, [1, 2, 3])
    with pytest.raises(ValueError, match="need 3"):
        shamir.reconstruct(shares[:2], 3)


def test_t_minus_1_shares_are_uniform_whatever_the_secret():
    """Over the small prime 101: the joint distribution of t-1 = 2 shares at fixed points is
    uniform on the 101^2 pairs for secret 0 and for secret 77 (chi-square, df = 10200)."""
    p, draws = 101, 200_000
    rng = random.Random(3)
    for secret in (0, 77):
        counts = np.zeros((p, p))
        for _ in range(draws):
            a, b = shamir.split(secret, 3, [4, 9, 20], prime=p, randbelow=rng.randrange)[:2]
            counts[a.y, b.y] += 1
        expected = draws / p**2
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        df = p**2 - 1
        assert abs(chi2 - df) < 5 * np.sqrt(2 * df), chi2
    # while t shares do tell: they reconstruct the secret exactly
    assert shamir.reconstruct(shamir.split(77, 3, [4, 9, 20], prime=p), 3, prime=p) == 77


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        shamir.split(shamir.PRIME, 2, [1, 2])
    with pytest.raises(ValueError):
        shamir.split(1, 3, [1, 2])
    with pytest.raises(ValueError):
        shamir.split(1, 2, [1, 1])
    with pytest.raises(ValueError):
        shamir.split(1, 2, [0, 1])
    seed = shamir.random_secret()
    with pytest.raises(ValueError, match="threshold >= 2"):
        shamir.share_seed(seed, 1, [1, 2], packing=2)
    with pytest.raises(ValueError, match="point -1"):
        shamir.share_seed(seed, 2, [1, shamir.PRIME - 1], packing=2)
    with pytest.raises(ValueError, match="16 bytes"):
        shamir.share_seed(seed[:15], 2, [1, 2], packing=1)
    with pytest.raises(ValueError, match="no field element"):
        shamir.recover_seed([(1, shamir.PRIME), (2, 5)], 2, packing=2)
    with pytest.raises(ValueError, match="no field element"):
        shamir.recover_seed([(1, shamir.PRIME << 64), (2, 5)], 2, packing=1)


@pytest.mark.parametrize("seed", range(5))
def test_large_points_take_the_exact_path_and_agree_with_a_plain_lagrange_loop(seed):
    """Points from 2^20 up skip the int64 grouping; both paths against the textbook formula
    (pow(., -1, p) per term, no batching)."""
    rng = random.Random(seed)
    secret = rng.randrange(shamir.PRIME)
    for points in (rng.sample(range(1, 2_000), 9), [rng.randrange(2**20, shamir.PRIME) for _ in range(9)]):
        shares = shamir.split(secret, 9, points, randbelow=rng.randrange)
        p = shamir.PRIME
        plain = sum(s.y * math.prod(o.x * pow(o.x - s.x, -1, p) for o in shares if o is not s) for s in shares) % p
        assert shamir.reconstruct(shares, 9) == plain == secret


def test_a_plain_share_is_in_the_field_only_when_both_halves_are():
    """A plain share is two field elements side by side: either half at or above the prime is
    no share (a hostile holder's value), refused by name, not reduced mod p and used."""
    p, low = shamir.PRIME, 2**64 - 1
    for hi, lo, ok in [(p - 1, p - 1, True), (0, 0, True), (p, 0, False), (0, p, False), (p - 1, low, False)]:
        assert shamir.value_in_field((hi << 64) | lo, 1) is ok, (hi, lo)
    assert not shamir.value_in_field(2**128, 1) and not shamir.value_in_field(-1, 1)
    assert shamir.value_in_field(p - 1, 2) and not shamir.value_in_field(p, 2)
    rng = random.Random(5)
    values = shamir.share_seed(shamir.random_secret(rng.randbytes), 2, [1, 2], 1, randbelow=rng.randrange)
    off_field = (values[1] >> 64 << 64) | p  # the low half at p: 8 bytes, but no field element
    with pytest.raises(ValueError, match="no field element"):
        shamir.recover_seed([(1, values[0]), (2, off_field)], 2, 1)
