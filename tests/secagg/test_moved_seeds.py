"""Two colluding holders moving an honest device's self seed (it has no commitment): they add to
their own shares a polynomial that vanishes at t - 1 honest holders' points (test_decoded_liars:
_shifted), so every share checked may lie on the moved polynomial. Used, the seed is wrong and the
sum is off by PRG(b) - PRG(b'): uniform garbage the colluders cannot choose (they know b' - b,
not b), which the coordinator committed. Real rounds (driver.py), then the lie."""

from __future__ import annotations

import pytest

from fedge.coordinator.secagg.round_state import SecAggRound
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, threshold_for
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import LIARS, ImplausibleSum, Unexplained

from .driver import MODEL, run
from .test_decoded_liars import BITS, LENGTH, _shifted
from .test_protocol import _inputs, _plain


def _attack(n, k, skip, length=LENGTH):
    """(inputs, t, colluders, the owner, the honest holders its seed is moved through): the
    owner's two last neighbours collude and answer first; the moved polynomial passes the first
    t - 1 honest holders in answer order after `skip` of them (left off it)."""
    values = _inputs(n, length, BITS, seed=n + k)
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
    there, so they are no evidence; the round is abandoned with no one named. (No sum check here,
    as under distributed DP; with one, test_one_liar.py.)"""
    values, t, colluders, owner, through = _attack(7, 6, skip=skip)
    left_out, dealers = set(), set()
    with pytest.raises(Unexplained, match="no one is named"):
        run(values, field_bits(BITS, 7), 6, t, lie=_shifted(sorted(values), colluders, owner, through),
            left_out=left_out, dealers=dealers)
    assert not left_out and not dealers


def _coordinator(values, k, t, view, answers, **dp) -> SecAggRound:
    """The coordinator's round state holding what driver.run's coordinator saw (nothing dropped);
    `dp`: SecAggSpec's distributed-DP fields."""
    n, length = len(values), len(next(iter(values.values())))
    state = SecAggRound(7, SecAggSpec(bits=BITS, field_bits=field_bits(BITS, n), **dp), MODEL, 1, {"w": (length,)},
                        graph_for=None)
    state.cohort, state.k, state.t = tuple(sorted(values)), k, t
    state.alive, state.masked, state.answers = tuple(view.masked), dict(view.masked), answers
    return state


def test_where_every_share_may_be_moved_the_garbage_sum_is_refused_by_name():
    """Five devices (k = 4, t = 3): an owner has h = t + 1 = 4 holders, two colluding, so the moved
    polynomial passes every share there is and no share check can tell. The sum came out off by
    a uniform field vector and the coordinator decoded and committed it (finite, so the model
    guard let it through). Now a coordinate above 5 * (2^b - 2), the most five inputs add up to,
    abandons the round by name (ImplausibleSum, an Unexplained: counted, no one named). The honest
    round with every input at the top code on one coordinate is that bound exactly and passes."""
    values, t, colluders, owner, through = _attack(5, 4, skip=0)
    top = 2**BITS - 2
    for v in values.values():
        v[0] = top
    total, survivors, view = run(values, field_bits(BITS, 5), 4, t)
    honest = _coordinator(values, 4, t, view, view.answers).unmasked_sum()[0]
    assert (honest == total).all() and total[0] == 5 * top
    lie = _shifted(sorted(values), colluders, owner, through)
    state = _coordinator(values, 4, t, view, lie(view.answers))
    with pytest.raises(ImplausibleSum, match="coordinates of the unmasked sum exceed 1270.*no one is named"):
        state.unmasked_sum()
    assert not state.left_out and not state.blamed
