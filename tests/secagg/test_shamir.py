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


def test_the_field_is_the_largest_prime_below_2_128_and_its_elements_take_16_bytes():
    assert _probably_prime(shamir.PRIME)
    assert not any(_probably_prime(x) for x in range(shamir.PRIME + 1, 2**128))  # the largest: the check says no
    assert shamir.PRIME < 2**128 and shamir.SHARE_BYTES == 16 and shamir.SECRET_BYTES == 16


def test_secrets_are_drawn_below_the_prime_and_one_at_or_above_it_is_refused():
    draws = iter([b"\xff" * 16, (shamir.PRIME).to_bytes(16, "big"), bytes(15) + b"\x07"])
    assert shamir.random_secret(lambda n: next(draws)) == bytes(15) + b"\x07"  # the first two drawn again
    with pytest.raises(ValueError, match="at or above the prime"):
        shamir.secret_to_int(shamir.PRIME.to_bytes(16, "big"))
    assert all(shamir.secret_to_int(shamir.random_secret()) < shamir.PRIME for _ in range(200))


@pytest.mark.parametrize("seed", range(20))
def test_any_t_shares_reconstruct(seed):
    rng = random.Random(seed)
    k = rng.randint(1, 30)
    t = rng.randint(1, k)
    secret = shamir.secret_to_int(rng.randbytes(16))
    points = rng.sample(range(1, 10_000), k)
    shares = shamir.split(secret, t, points, randbelow=rng.randrange)
    for _ in range(5):
        subset = rng.sample(shares, rng.randint(t, k))
        assert shamir.reconstruct(subset, t) == secret
    assert shamir.int_to_secret(secret) == shamir.int_to_secret(shamir.reconstruct(shares, t))


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
    with pytest.raises(ValueError, match="wrong share"):
        shamir.int_to_secret(2**128)


@pytest.mark.parametrize("seed", range(5))
def test_large_points_take_the_exact_path_and_agree_with_a_plain_lagrange_loop(seed):
    """Points from 2^20 up skip the int64 grouping; both paths against the textbook formula
    (pow(., -1, p) per term, no batching)."""
    rng = random.Random(seed)
    secret = shamir.secret_to_int(shamir.random_secret(rng.randbytes))
    for points in (rng.sample(range(1, 2_000), 9), [rng.randrange(2**20, shamir.PRIME) for _ in range(9)]):
        shares = shamir.split(secret, 9, points, randbelow=rng.randrange)
        p = shamir.PRIME
        plain = sum(s.y * math.prod(o.x * pow(o.x - s.x, -1, p) for o in shares if o is not s) for s in shares) % p
        assert shamir.reconstruct(shares, 9) == plain == secret
