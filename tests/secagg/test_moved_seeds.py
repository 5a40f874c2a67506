"""Two colluding holders moving an honest device's self seed (it has no commitment): they add to
their own shares a polynomial that vanishes at t - 1 honest holders' points (test_decoded_liars:
_shifted), so every share checked may lie on the moved polynomial. Used, the seed is wrong and the
sum is off by PRG(b) - PRG(b'): uniform garbage the colluders cannot choose (they know b' - b,
not b), which the coordinator committed. Real rounds (driver.py), then the lie."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, threshold_for
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import LIARS, Unexplained

from .driver import run
from .test_decoded_liars import BITS, LENGTH, _shifted
from .test_protocol import _inputs, _plain


def _attack(n, k, skip):
    """(inputs, t, colluders, the owner, the honest holders its seed is moved through): the
    owner's two last neighbours collude and answer first; the moved polynomial passes the first
    t - 1 honest holders in answer order after `skip` of them (left off it)."""
    values = _inputs(n, LENGTH, BITS, seed=n + k)
    ids = sorted(values)
    owner = ids[0]
    holders = sorted(neighbour_graph(tuple(ids), k, 1)[owner])  # driver.run's graph seed
    colluders = set(holders[-LIARS:])
    honest = holders[:-LIARS]  # in answer order after the colluders (_first)
    t = threshold_for(k, n)
    return values, t, colluders, owner, honest[skip:skip + t - 1]


@pytest.mark.parametrize(("n", "k"), [(10, 9), (16, 12)])
def test_a_seed_moved_through_the_first_t_plus_one_shares_is_caught_and_the_sum_is_exact(n, k):
    """The first unmask attempt checked t + 1 shares: two colluders among them plus t - 1 honest
    ones, all on the moved polynomial, passed, and the wrong seed was used (the sum garbage, no
    one named). Now it checks t + LIARS where there are that many: one honest share more is off
    it, decoding finds the dealt polynomial (h - t + 1 - d > LIARS) and the colluders are named."""
    values, t, colluders, owner, through = _attack(n, k, skip=0)
    left_out, dealers = set(), set()
    lie = _shifted(sorted(values), colluders, owner, through)
    total, survivors, _ = run(values, field_bits(BITS, n), k, t, lie=lie, left_out=left_out, dealers=dealers)
    assert (total == _plain(values, survivors, field_bits(BITS, n), LENGTH)).all()
    assert left_out == colluders and not dealers


@pytest.mark.parametrize("skip", [0, 1])
def test_where_h_minus_t_is_two_a_moved_seed_abandons_the_round_and_names_no_one(skip):
    """Seven devices (k = 6, t = 4, h - t = 2). skip 0: the moved polynomial passes the first
    t + 1 shares (the fast path used it). skip 1: it leaves the first honest holder off, the first
    check fails, and wrong_holders named that honest holder (the other five shares agree) and used
    the moved seed. Five shares on one polynomial are t + 1 < t + LIARS: two colluders can put them
    there, so they are no evidence; the round is abandoned with no one named."""
    values, t, colluders, owner, through = _attack(7, 6, skip=skip)
    left_out, dealers = set(), set()
    with pytest.raises(Unexplained, match="no one is named"):
        run(values, field_bits(BITS, 7), 6, t, lie=_shifted(sorted(values), colluders, owner, through),
            left_out=left_out, dealers=dealers)
    assert not left_out and not dealers

