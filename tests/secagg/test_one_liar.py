"""One lying holder where h - t = 2 (complete graphs of 6 or 7 devices, 10 with 2 dropped): once it
is left out, t + 1 shares of each self seed remain, what two colluders moving it would leave
(recovery.LIARS). From ea5d2bb they counted as no evidence and one liar stalled the round, no one
named. Without distributed DP the sum check (shared_encoding.implausible) refuses a sum unmasked
with a moved seed, so t + 1 are trusted there (recovery.py: the sum check); under distributed DP
nothing checks the sum and the strict rule stays. Real rounds (driver.py), then the lie."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, packing_for, threshold_for
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import ImplausibleSum, Unexplained
from fedge.edge_runtime.kernel.secagg.shared_encoding import implausible

from .driver import run
from .test_decode import _wrong_value
from .test_decoded_liars import BITS, _shifted
from .test_moved_seeds import _attack, _coordinator
from .test_protocol import _inputs

LONG = 256  # coordinates: a moved seed's sum passes the check at n = 7 with probability 0.875^256
DP = {"dp_gamma": 1e-3, "dp_clip_norm": 0.5, "dp_sigma": 0.5}


def _oracle(values, who) -> np.ndarray:
    """The plain integer sum of the inputs (the field is sized so it never wraps)."""
    return sum(values[d].astype(np.int64) for d in who)


def _self_lies(liar, packing, seed, about=None):
    """`liar` answers first, a random value for every self seed it holds a share of (mask keys
    right); `about`: holder -> the one owner it lies about, instead."""
    rng = random.Random(seed)
    wrong = about or {liar: None}

    def lie(answers):
        return {h: {o: (kind, _wrong_value(rng, packing)) if h in wrong and kind == "self" and wrong[h] in (None, o)
                    else (kind, y) for o, (kind, y) in answers[h].items()}
                for h in sorted(answers, key=lambda h: h not in wrong)}
    return lie


@pytest.mark.parametrize(("n", "k", "dropped"), [(6, 5, 0), (7, 6, 0), (10, 9, 2)])
def test_one_liar_where_h_minus_t_is_two_is_named_and_the_sum_is_exact(n, k, dropped):
    """Without the sum check (as under distributed DP) the round stalls with no one named, as
    before; with it (no distributed DP) the liar is named and the sum is the inputs' plain sum."""
    values = _inputs(n, LONG, BITS, seed=n)
    ids = sorted(values)
    t, packing, m = threshold_for(k, n), packing_for(k, n), field_bits(BITS, n)
    assert k - dropped - t == 2
    liar, gone = ids[-1], tuple(ids[:dropped])
    spec = SecAggSpec(bits=BITS, field_bits=m)
    left_out, dealers = set(), set()
    total, survivors, _ = run(values, m, k, t, drop_after_share=gone, lie=_self_lies(liar, packing, n),
                              left_out=left_out, dealers=dealers,
                              check=lambda total: implausible(total, n - dropped, spec))
    assert (total.astype(np.int64) == _oracle(values, survivors)).all()
    assert left_out == {liar} and not dealers
    with pytest.raises(Unexplained, match="no one is named"):
        run(values, m, k, t, drop_after_share=gone, lie=_self_lies(liar, packing, n), left_out=left_out,
            dealers=dealers)
    assert left_out == {liar} and not dealers


@pytest.mark.parametrize("dp", [{}, DP])
def test_the_coordinator_names_one_liar_at_seven_devices_only_without_distributed_dp(dp):
    """Seven devices (k = 6, t = 4), through the coordinator's round state: without distributed DP
    the liar is named and the sum exact; with it (no sum check) the strict rule stays: abandoned,
    no one named."""
    values = _inputs(7, LONG, BITS, seed=3)
    ids = sorted(values)
    t = threshold_for(6, 7)
    _, survivors, view = run(values, field_bits(BITS, 7), 6, t)
    state = _coordinator(values, 6, t, view, _self_lies(ids[2], packing_for(6, 7), 3)(view.answers), **dp)
    if dp:
        with pytest.raises(Unexplained, match="no one is named"):
            state.unmasked_sum()
        assert not state.left_out and not state.blamed
        return
    total, count = state.unmasked_sum()
    assert count == 7 and (total.astype(np.int64) == _oracle(values, survivors)).all()
    assert state.left_out == {ids[2]} and not state.blamed


@pytest.mark.parametrize("skip", [0, 1])
def test_colluders_moving_a_seed_where_h_minus_t_is_two_get_an_implausible_sum_and_no_one_named(skip, monkeypatch):
    """Seven devices: two colluders move the owner's self seed through t - 1 honest shares. With
    t + 1 trusted, the honest holder off the moved polynomial is picked and the moved seed used
    (shown with the sum check switched off: that holder named, the sum wrong); with the check the
    garbage sum is refused (ImplausibleSum) before anyone is named, and the round is not committed."""
    values, t, colluders, owner, through = _attack(7, 6, skip=skip, length=LONG)
    _, _, view = run(values, field_bits(BITS, 7), 6, t)
    lie = _shifted(sorted(values), colluders, owner, through)
    holders = set(neighbour_graph(tuple(sorted(values)), 6, 1)[owner])
    (off,) = holders - colluders - set(through)
    state = _coordinator(values, 6, t, view, lie(view.answers))
    with pytest.raises(ImplausibleSum, match="no one is named"):
        state.unmasked_sum()
    assert not state.left_out and not state.blamed
    unchecked = _coordinator(values, 6, t, view, lie(view.answers))
    monkeypatch.setattr(unchecked, "_implausible", lambda total: None)
    total, _ = unchecked.unmasked_sum()
    assert unchecked.left_out == {off}
    assert not (total.astype(np.int64) == _oracle(values, sorted(values))).all()


def test_two_liars_about_different_seeds_are_decoded_and_named_without_distributed_dp():
    """Seven devices (k = 6, t = 4, e = 1): one liar about dev000's self seed, another about
    dev001's. No single holder explains both; each decodes one share off, h - t + 1 - d = 2 answers
    from another polynomial, which is LIARS: untrusted without a sum check (abandoned, no one
    named), trusted with it (more than LIARS - 1): both named, the sum exact."""
    values = _inputs(7, LONG, BITS, seed=5)
    ids = sorted(values)
    t, m = threshold_for(6, 7), field_bits(BITS, 7)
    spec = SecAggSpec(bits=BITS, field_bits=m)
    about = {ids[-1]: ids[0], ids[-2]: ids[1]}
    left_out, dealers = set(), set()
    with pytest.raises(Unexplained, match="no one is named"):
        run(values, m, 6, t, lie=_self_lies(None, packing_for(6, 7), 5, about), left_out=left_out, dealers=dealers)
    assert not left_out and not dealers
    total, survivors, _ = run(values, m, 6, t, lie=_self_lies(None, packing_for(6, 7), 5, about), left_out=left_out,
                              dealers=dealers, check=lambda total: implausible(total, 7, spec))
    assert (total.astype(np.int64) == _oracle(values, survivors)).all()
    assert left_out == set(about) and not dealers


def test_colluders_moving_two_seeds_past_decoding_get_an_implausible_sum_and_no_one_named():
    """test_decoded_liars' two colluders moving dev000's and dev001's seeds, each one honest share
    off: with LIARS - 1 the decodings are trusted and the honest holders off them would be named,
    but the sum is garbage and the check refuses it first: ImplausibleSum, no one named."""
    values = _inputs(7, LONG, BITS, seed=13)
    ids = sorted(values)
    m = field_bits(BITS, 7)
    spec, colluders = SecAggSpec(bits=BITS, field_bits=m), set(ids[-2:])
    first = _shifted(ids, colluders, ids[0], ids[1:4])
    lie = _shifted(ids, colluders, ids[1], (ids[0], ids[2], ids[4]))
    left_out, dealers = set(), set()
    with pytest.raises(ImplausibleSum, match="no one is named"):
        run(values, m, 6, threshold_for(6, 7), lie=lambda answers: lie(first(answers)), left_out=left_out,
            dealers=dealers, check=lambda total: implausible(total, 7, spec))
    assert not left_out and not dealers
