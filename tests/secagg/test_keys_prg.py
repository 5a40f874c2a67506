import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import keys
from fedge.edge_runtime.kernel.secagg.prg import expand


def test_both_ends_of_a_pair_derive_the_same_seed_bound_to_round_purpose_and_pair():
    a, b, c = keys.generate_keypair(), keys.generate_keypair(), keys.generate_keypair()
    ab = keys.pair_secret(a.private, b.public, 3, "mask", "a", "b")
    assert ab == keys.pair_secret(b.private, a.public, 3, "mask", "b", "a")
    assert len(ab) == 32
    assert ab != keys.pair_secret(a.private, b.public, 4, "mask", "a", "b")
    assert ab != keys.pair_secret(a.private, b.public, 3, "cipher", "a", "b")
    assert ab != keys.pair_secret(a.private, c.public, 3, "mask", "a", "c")
    assert keys.public_of(a.private) == a.public


def test_shares_open_only_for_their_pair_direction_and_round():
    key = keys.pair_secret(*(lambda a, b: (a.private, b.public))(keys.generate_keypair(), keys.generate_keypair()),
                           1, "cipher", "a", "b")
    blob = keys.encrypt_share(key, 1, "a", "b", b"secret share")
    assert keys.decrypt_share(key, 1, "a", "b", blob) == b"secret share"
    assert b"secret share" not in blob
    for args in ((1, "b", "a"), (2, "a", "b")):
        with pytest.raises(keys.ShareDecryptionFailed):
            keys.decrypt_share(key, *args, blob)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(keys.ShareDecryptionFailed):
        keys.decrypt_share(key, 1, "a", "b", tampered)
    with pytest.raises(keys.ShareDecryptionFailed):
        keys.decrypt_share(key, 1, "a", "b", b"short")


@pytest.mark.parametrize("bits", [1, 7, 18, 26, 32])
def test_the_prg_is_deterministic_in_range_and_uniform(bits):
    seed = bytes(range(32))
    v = expand(seed, 200_000, bits)
    assert v.dtype == np.uint32 and np.array_equal(v, expand(seed, 200_000, bits))
    assert int(v.max()) < 2**bits
    assert not np.array_equal(v, expand(bytes(32), 200_000, bits))
    # uniform: the mean of U{0..2^m-1} is (2^m - 1)/2, std of the mean tiny
    mean, sd = (2**bits - 1) / 2, np.sqrt((4**bits - 1) / 12 / v.size)
    assert abs(v.astype(np.float64).mean() - mean) < 6 * sd
    # a prefix of a longer expansion is the shorter expansion (one keystream per seed)
    assert np.array_equal(expand(seed, 10, bits), v[:10])


def test_the_prg_refuses_bad_seeds_and_widths():
    with pytest.raises(ValueError):
        expand(b"x", 4, 8)
    with pytest.raises(ValueError):
        expand(bytes(32), 4, 33)


def test_the_unreduced_words_reduce_to_the_expansion():
    from fedge.edge_runtime.kernel.secagg.prg import words

    seed = bytes(range(16))
    assert np.array_equal(words(seed, 1000) & np.uint32(2**18 - 1), expand(seed, 1000, 18))
    assert np.array_equal(words(seed, 1000), expand(seed, 1000, 32))
