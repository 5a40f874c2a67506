"""The coordinator's unmask split over worker processes gives the same sum, bit for bit, as
the plain modular sum of the survivors' inputs (the oracle) and as the one-process unmask."""

import functools
import os

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import masking, shamir
from fedge.edge_runtime.kernel.secagg.keys import generate_keypair, keypair_from_seed
from fedge.edge_runtime.kernel.secagg.masking import mask_input, sum_mod, unmask
from fedge.edge_runtime.kernel.secagg.recovery import UnmaskFailed, unmask_answers


def _round(n: int, dropped: int, length: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = [f"d{i:02d}" for i in range(n)]
    mask_seeds = {d: shamir.random_secret(rng.bytes) for d in ids}
    _round.mask_seeds = mask_seeds
    keys = {d: keypair_from_seed(mask_seeds[d]) for d in ids}
    self_seeds = {d: shamir.random_secret(rng.bytes) for d in ids}
    values = {d: rng.integers(0, 2 ** (m - 4), size=length, dtype=np.uint32) for d in ids}
    gone = set(rng.choice(ids, size=dropped, replace=False).tolist())
    alive = [d for d in ids if d not in gone]
    # complete graph: every device masked with every other one (all shared keys before the drop)
    masked = [mask_input(values[d], d, self_seeds[d], keys[d].private,
                         {p: keys[p].public for p in ids if p != d}, 5, m) for d in alive]
    args = (sum_mod(masked, m, length), {d: self_seeds[d] for d in alive},
            {g: keys[g].private for g in gone}, {g: {s: keys[s].public for s in alive} for g in gone}, 5, m)
    # what the survivors reveal: t = 3 real Shamir shares of each secret, held by survivors
    answers: dict[str, dict] = {}
    for owner in ids:
        kind, secret = ("mask", mask_seeds[owner]) if owner in gone else ("self", self_seeds[owner])
        holders = [h for h in alive if h != owner][:3]
        points = [1 + ids.index(h) for h in holders]  # session.point_of over the sorted cohort
        for h, share in zip(holders, shamir.share_seed(secret, 3, points, packing=1)):
            answers.setdefault(h, {})[owner] = (kind, share)
    _round.answers = (answers, tuple(ids), 3, tuple(alive), tuple(sorted(gone)))
    return args, sum_mod((values[d] for d in alive), m, length)


@pytest.mark.parametrize("seed", range(3))
def test_unmask_in_worker_processes_matches_the_plain_sum(monkeypatch, seed):
    args, plain = _round(n=9, dropped=3, length=1_001, m=18, seed=seed)
    serial = unmask(*args, workers=1)
    monkeypatch.setattr(masking, "PARALLEL_MIN_WORDS", 0)  # force the worker processes at this small size
    parallel = unmask(*args, workers=2)
    assert np.array_equal(serial, plain)
    assert np.array_equal(parallel, plain)


def test_unmask_with_no_dropped_device_removes_only_self_masks(monkeypatch):
    args, plain = _round(n=6, dropped=0, length=333, m=26, seed=9)
    monkeypatch.setattr(masking, "PARALLEL_MIN_WORDS", 0)
    assert np.array_equal(unmask(*args, workers=3), plain)


def test_a_wrong_dropped_key_does_not_unmask():
    """The test can fail: a key that is not the dropped device's leaves its pair masks in."""
    (masked, seeds, dropped_keys, peers, rid, m), plain = _round(n=7, dropped=2, length=257, m=18, seed=4)
    wrong = {g: generate_keypair().private for g in dropped_keys}
    assert not np.array_equal(unmask(masked, seeds, wrong, peers, rid, m), plain)


@pytest.mark.parametrize("workers", [1, 2])
def test_secrets_reconstructed_in_the_workers_unmask_the_plain_sum(monkeypatch, workers):
    (masked, _, _, peers, rid, m), plain = _round(n=8, dropped=3, length=2_000, m=26, seed=11)
    answers, cohort, t, alive, gone = _round.answers
    monkeypatch.setattr(masking, "PARALLEL_MIN_WORDS", 0)
    assert np.array_equal(unmask_answers(masked, answers, cohort, t, alive, gone, peers, rid, m, packing=1,
                                         workers=workers), plain)


def test_a_forged_share_fails_the_unmask_by_name_from_a_worker(monkeypatch):
    (masked, _, _, peers, rid, m), _ = _round(n=8, dropped=3, length=500, m=26, seed=12)
    answers, cohort, t, alive, gone = _round.answers
    holder = next(h for h, revealed in answers.items() if gone[0] in revealed)
    kind, y = answers[holder][gone[0]]
    answers[holder][gone[0]] = (kind, y ^ 1)  # one bit of the second half flipped: still field elements
    publics = {g: keypair_from_seed(_round.mask_seeds[g]).public for g in gone}
    monkeypatch.setattr(masking, "PARALLEL_MIN_WORDS", 0)
    with pytest.raises(UnmaskFailed, match=f"mask secret of {gone[0]}"):
        unmask_answers(masked, answers, cohort, t, alive, gone, peers, rid, m, packing=1, workers=2,
                       mask_publics=publics)


def _dies_in_a_worker(parent: int, kind: str, owner: str, value: bytes) -> bytes:
    if os.getpid() != parent:
        os._exit(1)  # as the kernel's OOM killer would end it: no exception, no cleanup
    return value


def test_a_worker_that_dies_leaves_the_sum_to_the_calling_process(monkeypatch):
    """A worker killed mid-unmask breaks the pool: the unmask is the same, computed here."""
    args, plain = _round(n=7, dropped=2, length=999, m=18, seed=13)
    monkeypatch.setattr(masking, "PARALLEL_MIN_WORDS", 0)
    assert np.array_equal(unmask(*args, workers=2, resolve=functools.partial(_dies_in_a_worker, os.getpid())), plain)
