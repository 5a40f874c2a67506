"""Several holders answering wrong unmask shares (recovery.decoded_liars): each failing secret is
decoded (Reed-Solomon, up to e = (h - t) // 2 wrong shares of it), the wrong shares are left out,
every holder that sent one is named, and the sum is the plain sum of the survivors' inputs; past
e, or where colluders could have moved a secret's polynomial, the round fails and no honest
holder is named. Real rounds (driver.py: real dealing, masking and reveal), then the lies."""

from __future__ import annotations

import math
import random

import pytest

from fedge.edge_runtime.kernel.secagg.graph import packing_for, threshold_for
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import Unexplained, UnmaskFailed
from fedge.edge_runtime.kernel.secagg.session import point_of
from fedge.edge_runtime.kernel.secagg.shamir import PRIME

from .driver import run
from .test_decode import _wrong_value
from .test_protocol import _inputs, _plain

BITS, LENGTH = 8, 40
LOW = 2**64 - 1


def _random_lies(liars, packing, seed):
    """Each liar answers first (its shares among the t + 1 the sum is first tried with), a random
    value for every owner it holds a share of."""
    rng = random.Random(seed)

    def lie(answers):
        return {h: {o: (kind, _wrong_value(rng, packing)) if h in liars else (kind, y)
                    for o, (kind, y) in answers[h].items()} for h in _first(liars, answers)}
    return lie


def _first(liars, answers):
    return sorted(answers, key=lambda h: h not in liars)


def _round(n, k, liars=0, dropped=0):
    """(the inputs, the sorted ids, t, packing, the last `liars` ids, the first `dropped` ids)."""
    values = _inputs(n, LENGTH, BITS, seed=n + k)
    ids = sorted(values)
    t, packing = threshold_for(k, n), packing_for(k, n)
    return values, ids, t, packing, set(ids[n - liars:]), tuple(ids[:dropped])


# (n, k, dropped, liars): e = (h - t) // 2 = 2 (complete, plain shares: k = 9, t = 5), 3 (k = 13,
# t = 7), 2 packed (k = 12 of 16, t = 8), and a dropped device's mask key (its 9 holders, e = 2;
# the alive have 8, e = 1, so the liars lie about its shares alone)
CASES = [(10, 9, 0, 2), (14, 13, 0, 3), (16, 12, 0, 2), (10, 9, 1, 2)]


@pytest.mark.parametrize(("n", "k", "dropped", "liars"), CASES)
def test_several_liars_are_left_out_and_named_and_the_sum_is_exact(n, k, dropped, liars):
    """Before, no single holder explained the failures and the round was abandoned, no one named:
    two devices could stall every round they were drawn into."""
    values, ids, t, packing, lying, gone = _round(n, k, liars, dropped)
    lie = _random_lies(lying, packing, seed=n)
    if gone:
        lie = _lies_about(gone, lie)
    left_out, dealers = set(), set()
    total, survivors, _ = run(values, field_bits(BITS, n), k, t, drop_after_share=gone, lie=lie,
                              left_out=left_out, dealers=dealers)
    assert (total == _plain(values, survivors, field_bits(BITS, n), LENGTH)).all()
    assert left_out == lying and not dealers


def _lies_about(owners, lie):
    """`lie`'s wrong answers for `owners` only, the right ones for every other."""
    def only(answers):
        wrong = lie(answers)
        return {h: {o: v if o in owners else answers[h][o] for o, v in revealed.items()}
                for h, revealed in wrong.items()}
    return only


@pytest.mark.parametrize(("n", "k"), [(10, 9), (16, 12)])
def test_e_plus_one_liars_fail_the_round_and_name_no_one(n, k):
    """e + 1 = 3 holders answering at random about every owner: no secret decodes within e, the
    round cannot be unmasked (Unexplained: no one is named), and no honest device is named."""
    values, ids, t, packing, lying, _ = _round(n, k, liars=3)
    left_out, dealers = set(), set()
    with pytest.raises(Unexplained, match="no one is named"):
        run(values, field_bits(BITS, n), k, t, lie=_random_lies(lying, packing, seed=n), left_out=left_out,
            dealers=dealers)
    assert not left_out and not dealers


def _shifted(cohort, colluders, owner, honest):
    """The colluders' answers for `owner` moved onto the dealt polynomial plus prod (x - x_i) over
    the points of `honest` (its low half where shares are plain), answered first: a polynomial the honest
    holders in `honest` still lie on, that the colluders reach knowing only their own shares."""
    roots = [point_of(h, cohort) for h in honest]

    def lie(answers):
        out = {h: dict(answers[h]) for h in _first(colluders, answers)}
        for h in colluders:
            kind, y = out[h][owner]
            delta = math.prod(point_of(h, cohort) - r for r in roots) % PRIME
            out[h][owner] = (kind, y - (y & LOW) + ((y & LOW) + delta) % PRIME)
        return out
    return lie


def test_two_colluders_cannot_have_a_moved_self_seed_used():
    """Seven devices (k = 6, t = 4: h - t = 2, e = 1). Two colluders move d0's self seed onto a
    polynomial through three honest holders' shares, leaving d4 off it, and d1's leaving d3 off:
    each decodes, one share off, to the moved polynomial. Used, the sum would be wrong and d3 and
    d4 named; a polynomial only h - t + 1 - 1 = 2 answers from the dealt one is not trusted
    (recovery.LIARS), and the round fails with no one named."""
    values, ids, t, packing, colluders, _ = _round(7, 6, liars=2)
    first = _shifted(ids, colluders, ids[0], ids[1:4])
    lie = _shifted(ids, colluders, ids[1], (ids[0], ids[2], ids[4]))
    left_out, dealers = set(), set()
    with pytest.raises(Unexplained):
        run(values, field_bits(BITS, 7), 6, t, lie=lambda answers: lie(first(answers)), left_out=left_out,
            dealers=dealers)
    assert not left_out and not dealers


def test_a_decoded_mask_key_is_used_only_if_it_is_the_advertised_one():
    """Ten devices, one dropped: its mask key has 9 holders (t = 5, e = 2). Three colluders move
    its polynomial through four honest holders' shares: it decodes, two honest shares off, to a
    key the device did not advertise. Those two were named and left out before the sum failed;
    now the decoding is not used and no holder is named (the dropped device may be: three
    colluders can frame a dealer where e = 2, recovery.LIARS)."""
    values, ids, t, packing, colluders, gone = _round(10, 9, liars=3, dropped=1)
    honest = [h for h in ids[1:] if h not in colluders]
    left_out = set()
    with pytest.raises(UnmaskFailed):
        run(values, field_bits(BITS, 10), 9, t, drop_after_share=gone,
            lie=_shifted(ids, colluders, gone[0], honest[:4]), left_out=left_out, dealers=set())
    assert not left_out
