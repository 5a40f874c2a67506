"""The protocol end to end in memory (driver.py): the unmasked sum equals the plain modular
sum of the survivors' inputs bit for bit, whoever drops when; the coordinator's view of one
device is uniform; and a device refuses unmask requests that would reveal it."""

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.graph import choose_parameters
from fedge.edge_runtime.kernel.secagg.masking import mask_input, sum_mod
from fedge.edge_runtime.kernel.secagg.quantize import field_bits
from fedge.edge_runtime.kernel.secagg.recovery import UnmaskFailed

from .driver import MODEL, run


def _inputs(n: int, length: int, bits: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"dev{i:03d}": rng.integers(0, 2**bits - 1, size=length, dtype=np.uint32) for i in range(n)}


def _plain(values, who, m, length):
    return sum_mod((values[d] for d in who), m, length)


@pytest.mark.parametrize("n,dropout", [(20, 0.0), (20, 0.1), (20, 0.3), (40, 0.3)])
def test_the_unmasked_sum_is_the_plain_sum_with_dropouts_after_sharing(n, dropout):
    bits, length = 16, 3000
    m = field_bits(bits, n)
    params = choose_parameters(n)
    values = _inputs(n, length, bits, seed=n)
    gone = tuple(sorted(values))[: int(dropout * n)]
    total, survivors, view = run(values, m, params.neighbours, params.threshold, drop_after_share=gone)
    assert set(survivors) == set(values) - set(gone)
    assert np.array_equal(total, _plain(values, survivors, m, length))
    assert int(total.max()) < 2**m


def test_a_sparse_graph_with_drops_at_every_stage():
    """n = 60 with k = 24 (sparser than the defaults, to exercise SecAgg+'s partial graph and its
    packed shares, t = k/2 + 2): drops before sharing, after sharing, and survivors silent in the
    unmask stage."""
    n, bits, length, k, t = 60, 8, 500, 24, 14
    m = field_bits(bits, n)
    values = _inputs(n, length, bits, seed=1)
    ids = sorted(values)
    total, survivors, _ = run(values, m, k, t, drop_before_share=ids[:3], drop_after_share=ids[3:9],
                              silent_in_unmask=ids[9:12])
    assert survivors == tuple(ids[9:])
    assert np.array_equal(total, _plain(values, survivors, m, length))


def test_too_many_silent_in_unmask_fails_loudly_not_wrongly():
    n = 10
    values = _inputs(n, 50, 8, seed=2)
    with pytest.raises(UnmaskFailed):
        run(values, field_bits(8, n), 9, 6, silent_in_unmask=sorted(values)[:5])


def test_a_masked_vector_is_uniform_over_the_field():
    """The coordinator's view of one device: a constant input (all zeros), masked with fresh keys
    each round, is uniform mod 2^m over many seeds (chi-square on the values of coordinate 0..)."""
    m, length, rounds = 6, 64, 400
    counts = np.zeros(2**m)
    for r in range(rounds):
        me, other = sess.start("a", r, MODEL), sess.start("b", r, MODEL)
        y = mask_input(np.zeros(length, dtype=np.uint32), "a", me.self_seed, me.mask.private,
                       {"b": other.mask.public}, r, m)
        counts += np.bincount(y, minlength=2**m)
    expected = rounds * length / 2**m
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = 2**m - 1
    assert abs(chi2 - df) < 6 * np.sqrt(2 * df), chi2


def test_no_single_contributor_coordinate_is_in_the_clear():
    """With every device masking every coordinate of the shared subset, the masked vectors show
    nothing of a coordinate that only one device set: its masked value differs from its input."""
    n, bits, length = 8, 8, 2000
    m = field_bits(bits, n)
    values = {f"d{i}": np.zeros(length, dtype=np.uint32) for i in range(n)}
    values["d3"][17] = 200  # only d3 touches coordinate 17
    total, _, view = run(values, m, 7, 5)
    assert int(total[17]) == 200 and int(total.sum()) == 200
    assert all(not np.array_equal(y, values[d]) for d, y in view.masked.items())
    assert np.mean(view.masked["d3"] == values["d3"]) < 0.05  # no more agreement than chance (1/2^m)


def _shared_session(n=6, t=4):
    values = _inputs(n, 10, 8, seed=5)
    cohort = tuple(sorted(values))
    sessions = {d: sess.start(d, 1, MODEL) for d in cohort}
    adv = {d: s.advertised for d, s in sessions.items()}
    inbox = {d: {} for d in cohort}
    for d in cohort:
        sessions[d], out = sess.shares_for_neighbours(sessions[d], cohort, tuple(x for x in cohort if x != d), t, adv)
        for p, blob in out.items():
            inbox[p][d] = blob
    return {d: sess.receive_shares(sessions[d], inbox[d]) for d in cohort}, cohort


def test_a_device_declines_unmask_requests_that_would_reveal_it():
    sessions, cohort = _shared_session()
    me = sessions[cohort[0]]
    cases = [
        ((cohort, (cohort[1],), MODEL), sess.SETS_OVERLAP),
        ((cohort[:3], cohort[3:], MODEL), sess.TOO_FEW_NEIGHBOURS),
        ((cohort, (), "cd" * 32), sess.MODEL_MISMATCH),
        ((cohort[1:], (), MODEL), sess.NOT_IN_COHORT),
    ]
    for args, reason in cases:
        with pytest.raises(sess.SecAggDecline) as exc:
            sess.reveal(me, *args)
        assert exc.value.reason == reason
    answered, shares = sess.reveal(me, cohort[:-1], cohort[-1:], MODEL)
    assert {o: kind for o, (kind, _) in shares.items()} == {**{d: "self" for d in cohort[1:-1]}, cohort[-1]: "mask"}
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.reveal(answered, cohort, (), MODEL)
    assert exc.value.reason == sess.ALREADY_ANSWERED


def test_a_neighbour_committed_to_another_model_stops_key_sharing():
    cohort = ("a", "b", "c")
    sessions = {d: sess.start(d, 1, MODEL) for d in cohort}
    adv = {d: s.advertised for d, s in sessions.items()}
    adv["c"] = sess.Advertised(adv["c"].cipher_public, adv["c"].mask_public, "ef" * 32)
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(sessions["a"], cohort, ("b", "c"), 2, adv)
    assert exc.value.reason == sess.PEER_MODEL_MISMATCH


@pytest.mark.parametrize("n,dropout", [
    (100, 0.3),
    pytest.param(100, 0.0, marks=pytest.mark.slow),
    pytest.param(100, 0.1, marks=pytest.mark.slow),
    pytest.param(1000, 0.3, marks=pytest.mark.slow),  # about 80 s of CPU: Shamir in Python dominates
])
def test_exact_at_the_issues_cohort_sizes_with_default_k_and_t(n, dropout):
    """Issue 12's sizes, the whole protocol, k and t as documented (n = 1000: k = 222, t = 113, packed shares)."""
    bits, length = 16, 500 if n > 100 else 2000
    m = field_bits(bits, n)
    params = choose_parameters(n)
    values = _inputs(n, length, bits, seed=7)
    gone = tuple(sorted(values))[::max(1, round(1 / dropout))][: int(dropout * n)] if dropout else ()
    total, survivors, _ = run(values, m, params.neighbours, params.threshold, drop_after_share=gone)
    assert len(survivors) == n - len(gone)
    assert np.array_equal(total, _plain(values, survivors, m, length))


def test_a_session_encrypts_one_set_of_shares_only():
    """The AEAD nonce is implied by the pair's direction, so a second encryption under the same
    round key must never happen: the session refuses it by name."""
    sessions, cohort = _shared_session()
    me = sessions[cohort[0]]
    adv = {d: s.advertised for d, s in sessions.items()}
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(me, cohort, cohort[1:], 4, adv)
    assert exc.value.reason == sess.ALREADY_SHARED


def test_a_wrong_share_of_a_dropped_mask_key_fails_the_unmask_by_name():
    """Every field element is a possible 16-byte seed, so a wrong share reconstructs some other
    seed; for a dropped device's mask key the coordinator holds the key it advertised, and the
    reconstruction must match it: otherwise the round fails by name, it does not apply a wrong sum."""
    from fedge.edge_runtime.kernel.secagg import shamir
    from fedge.edge_runtime.kernel.secagg.keys import keypair_from_seed
    from fedge.edge_runtime.kernel.secagg.recovery import gather_shares, secret_from

    seed = shamir.random_secret()
    cohort = ("a", "b", "c")  # points 1, 2, 3
    b, c = shamir.share_seed(seed, 2, [2, 3], packing=2)
    honest = {"b": {"a": ("mask", b)}, "c": {"a": ("mask", c)}}
    forged = {"b": {"a": ("mask", (b + 1) % shamir.PRIME)}, "c": {"a": ("mask", c)}}
    publics = {"a": keypair_from_seed(seed).public}
    kind, shares = gather_shares(honest, cohort, 2, (), ("a",))["a"]
    assert secret_from(2, kind, "a", shares, packing=2, mask_publics=publics) == keypair_from_seed(seed).private
    kind, shares = gather_shares(forged, cohort, 2, (), ("a",))["a"]
    with pytest.raises(UnmaskFailed, match="mask secret of a: .* did not advertise"):
        secret_from(2, kind, "a", shares, packing=2, mask_publics=publics)
