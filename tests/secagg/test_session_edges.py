"""The device session's decisions at the points the mutation audit found unguarded
(benchmarks/results/2026-12-06-mutation9-secagg): which share of each owner an unmask answer
reveals, the t boundaries of sharing, masking and revealing, the peers a masked input counts,
and the checks on what a neighbour or the relay sends. Oracles: the protocol's rule as a plain
loop, seeds recovered by shamir.recover_seed from the revealed values, and shares sealed with a
direct ChaCha20-Poly1305 call."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg import shamir
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph
from fedge.edge_runtime.kernel.secagg.keys import pair_secret
from fedge.edge_runtime.kernel.secagg.messages import SEALED_SIZES

MODEL = "ab" * 32
ROUND = 3


def _round(cohort: tuple[str, ...], graph: dict[str, tuple[str, ...]], t: int, senders=None):
    """Every device of `cohort` shared with its neighbours of `graph`; each received the boxes of
    `senders` (default: all its neighbours). Returns the sessions after receive_shares."""
    sessions = {d: sess.start(d, ROUND, MODEL) for d in cohort}
    adv = {d: s.advertised for d, s in sessions.items()}
    inbox: dict[str, dict[str, bytes]] = {d: {} for d in cohort}
    for d in cohort:
        sessions[d], sealed = sess.shares_for_neighbours(sessions[d], cohort, graph[d], t, adv)
        for peer, blob in sealed.items():
            inbox[peer][d] = blob
    return {d: sess.receive_shares(sessions[d], {s: b for s, b in inbox[d].items()
                                                   if senders is None or s in senders}) for d in cohort}, sessions


def _complete(n: int) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    cohort = tuple(f"d{i}" for i in range(n))
    return cohort, {d: tuple(x for x in cohort if x != d) for d in cohort}


def _expected(s: sess.DeviceSession, alive, dropped) -> dict[str, tuple[str, int]]:
    """The rule, as a loop: the self share of an alive owner, the mask share of a dropped one,
    nothing of an owner the request names in neither set."""
    out = {}
    for owner in s.received:
        if owner in alive:
            out[owner] = ("self", s.received[owner][1])
        if owner in dropped:
            out[owner] = ("mask", s.received[owner][0])
    return out


def test_an_owner_in_neither_set_gets_nothing_revealed():
    """A coordinator that leaves an owner out of both sets at some holders (and lists it alive
    at others) would otherwise collect its mask-key shares there and its self-mask shares
    elsewhere: both secrets, without the overlap check ever seeing the owner twice."""
    cohort, graph = _complete(6)
    sessions, _ = _round(cohort, graph, 3)  # the complete graph's floor: up to 2 of 5 may be left out
    me = sessions["d0"]
    for left_out in range(1, 3):
        for gone in itertools.combinations(cohort[1:], left_out):
            alive = tuple(d for d in cohort if d not in gone)
            _, shares = sess.reveal(me, alive, (), MODEL)
            assert shares == _expected(me, alive, ())
            assert not set(gone) & set(shares)


def test_revealed_values_give_back_the_alive_self_seed_and_the_dropped_mask_seed():
    cohort, graph = _complete(6)
    sessions, dealt = _round(cohort, graph, 4)
    alive, dropped = cohort[:5], cohort[5:]
    answers = {d: sess.reveal(sessions[d], alive, dropped, MODEL)[1] for d in alive}
    for owner, seed, kind in (("d1", dealt["d1"].self_seed, "self"), ("d5", dealt["d5"].mask_seed, "mask")):
        held = [(sess.point_of(d, cohort), answers[d][owner][1]) for d in alive if owner in answers[d]]
        assert all(answers[d][owner][0] == kind for d in alive if owner in answers[d])
        assert shamir.recover_seed(held[:4], 4, packing=1) == seed


def test_a_sessions_two_seeds_are_drawn_apart():
    """The self-mask seed is revealed for a survivor; were it the mask key's seed, the
    coordinator would hold the survivor's pair masks too and unmask its input."""
    seeds = [seed for d in range(8) for seed in (sess.start(f"d{d}", 1, MODEL).self_seed,
                                                   sess.start(f"d{d}", 1, MODEL).mask_seed)]
    s = sess.start("a", 1, MODEL)
    assert s.self_seed != s.mask_seed and len(set(seeds)) == len(seeds)


def test_exactly_t_alive_neighbours_are_enough_and_t_minus_one_are_not():
    cohort, graph = _complete(6)
    sessions, _ = _round(cohort, graph, 4)
    me = sessions["d0"]
    answered, shares = sess.reveal(me, cohort[:5], cohort[5:], MODEL)  # 4 alive neighbours = t
    assert answered.answered and shares == _expected(me, cohort[:5], cohort[5:])
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.reveal(me, cohort[:4], cohort[4:], MODEL)
    assert exc.value.reason == sess.TOO_FEW_NEIGHBOURS


def test_only_neighbours_count_towards_t_on_a_sparse_graph():
    """Alive devices that are not this device's neighbours hold none of its shares: listing
    them alive must not stand in for its neighbours."""
    cohort = tuple(f"d{i}" for i in range(10))
    graph = neighbour_graph(cohort, 4, seed=11)
    sessions, _ = _round(cohort, graph, 4)
    me = sessions["d0"]
    others = tuple(d for d in cohort if d not in graph["d0"] and d != "d0")
    alive = ("d0", *graph["d0"][:3], *others)  # 3 neighbours of t = 4, padded with 5 strangers
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.reveal(me, alive, (), MODEL)
    assert exc.value.reason == sess.TOO_FEW_NEIGHBOURS


def test_a_neighbour_whose_shares_never_came_does_not_count_towards_t():
    """d0 masked with d1, d2, d3 only (d4 and d5's shares were not delivered to it): an unmask
    request listing d4 and d5 alive names four alive neighbours of t = 4, but only three are in
    d0's masked sum, so a coordinator padding the alive set must not get d0's shares."""
    cohort, graph = _complete(6)
    sessions, _ = _round(cohort, graph, 4, senders=("d1", "d2", "d3"))
    me = sessions["d0"]
    masked = set(sess.masking_peers(me))
    alive = cohort
    assert sum(p in alive for p in me.neighbours) >= 4 > sum(p in masked for p in alive)
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.reveal(me, alive, (), MODEL)
    assert exc.value.reason == sess.TOO_FEW_NEIGHBOURS


def test_exactly_t_neighbours_with_keys_are_enough_to_share():
    cohort, graph = _complete(5)
    sessions = {d: sess.start(d, ROUND, MODEL) for d in cohort}
    adv = {d: s.advertised for d, s in sessions.items() if d != "d4"}  # d4 never advertised: 3 peers
    s, sealed = sess.shares_for_neighbours(sessions["d0"], cohort, graph["d0"], 3, adv)
    assert sorted(sealed) == ["d1", "d2", "d3"] and s.threshold == 3
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(sessions["d1"], cohort, graph["d1"], 4, adv)
    assert exc.value.reason == sess.TOO_FEW_NEIGHBOURS


def test_a_short_mask_key_or_a_neighbour_outside_the_directory_is_named():
    cohort, graph = _complete(3)
    sessions = {d: sess.start(d, ROUND, MODEL) for d in cohort}
    adv = {d: s.advertised for d, s in sessions.items()}
    short = {**adv, "d2": sess.Advertised(adv["d2"].cipher_public, adv["d2"].mask_public[:31], MODEL)}
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(sessions["d0"], cohort, graph["d0"], 2, short)
    assert exc.value.reason == sess.BAD_KEY
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(sessions["d0"], cohort, graph["d0"], 2, adv, directory={"d1": b"\x00" * 32})
    assert exc.value.reason == sess.BAD_SIGNATURE


def test_a_share_from_a_stranger_is_named_and_a_wrong_length_one_is_unopened():
    cohort, graph = _complete(4)
    sessions, dealt = _round(cohort, graph, 3, senders=())
    me = sessions["d0"]
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.receive_shares(me, {"x9": b"\x00" * 48})
    assert exc.value.reason == sess.BAD_KEY
    # d1 seals, with the pair's real key, a packed graph's 16-byte plaintext on this complete graph
    # (a box size the wire lets through): it opens, but is no share here.
    key = pair_secret(dealt["d1"].cipher.private, me.cipher.public, ROUND, sess.CIPHER_PURPOSE, "d1", "d0")
    short = ChaCha20Poly1305(key).encrypt(bytes(11) + b"\x01", b"\x07" * sess.share_plaintext_bytes(2),
                                          f"fedge-secagg/v1/share/{ROUND}/d1/d0".encode())
    assert len(short) in SEALED_SIZES
    got = sess.receive_shares(me, {"d1": short})
    assert got.unopened == ("d1",) and "d1" not in got.received


def test_an_unopened_sender_still_masks_and_counts_towards_t():
    """A neighbour whose box did not open masked with this device all the same; leaving it out
    of the masks would leave their pair mask uncancelled in the sum."""
    cohort, graph = _complete(4)
    sessions, _ = _round(cohort, graph, 3, senders=("d1", "d2"))
    me = sess.receive_shares(sessions["d0"], {"d3": b"\x00" * 48})  # garbage from d3
    assert me.unopened == ("d3",) and set(me.received) == {"d1", "d2"}
    assert sess.masking_peers(me) == {p: me.peers[p].mask_public for p in ("d1", "d2", "d3")}
    sess.check_masking_peers(me)  # 2 opened + 1 unopened = t: no decline
