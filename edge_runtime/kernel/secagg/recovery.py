"""The coordinator's side of the unmask stage: secrets back from the survivors' shares."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from . import shamir
from .keys import keypair_from_seed
from .masking import unmask


class UnmaskFailed(ValueError):
    """Fewer than t shares for a secret the sum needs: the round cannot be unmasked."""


def gather_shares(answers: Mapping[str, Mapping[str, tuple[str, int]]], cohort: tuple[str, ...], threshold: int,
                  alive: tuple[str, ...], dropped: tuple[str, ...]) -> dict[str, tuple[str, tuple]]:
    """owner -> (kind, `threshold` of its shares as (x, y) pairs) from the unmask answers
    (answering device -> owner -> (kind, share value)): "self" for the alive, "mask" for the
    dropped. A share of the wrong kind for its owner is ignored: a device reveals only one kind
    per owner, and the coordinator must not mix. Only t shares are kept (reconstruction uses t),
    as plain ints: they are pickled to the unmask's workers, and Share objects cost ten times
    as much to pickle. Raises UnmaskFailed when some owner has fewer than `threshold` (checked
    before any reconstruction: the round fails fast)."""
    points = {d: i + 1 for i, d in enumerate(sorted(cohort))}  # session.point_of, without a scan per holder
    wanted = {d: "self" for d in alive} | {d: "mask" for d in dropped}
    shares: dict[str, list[tuple[int, int]]] = {d: [] for d in wanted}
    for holder, revealed in answers.items():
        x = points[holder]
        for owner, (kind, y) in revealed.items():
            if wanted.get(owner) == kind:
                shares[owner].append((x, y))
    for owner, kind in wanted.items():
        if len(shares[owner]) < threshold:
            raise UnmaskFailed(f"{len(shares[owner])} {kind} shares of {owner}, need {threshold}")
    return {owner: (kind, tuple(shares[owner][:threshold])) for owner, kind in wanted.items()}


def secret_from(threshold: int, kind: str, owner: str, shares, *, packing: int,
                mask_publics: Mapping[str, bytes] | None = None) -> bytes:
    """The self-mask seed ("self") or the mask private key ("mask") `shares` ((x, y) pairs)
    reconstruct (`packing`: graph.packing_for, as they were shared). With
    `mask_publics` (dropped device -> the mask public key it advertised), a mask key that is not
    the advertised one raises UnmaskFailed: some holder sent a wrong share. (A self-mask seed
    has no public commitment: a wrong share there gives a wrong sum, as in Bonawitz et al.)"""
    try:
        secret = shamir.recover_seed(shares, threshold, packing)
    except ValueError as exc:  # a share that was not the owner's (a wrong value from some holder)
        raise UnmaskFailed(f"{kind} secret of {owner}: {exc}") from None
    if kind == "self":
        return secret
    pair = keypair_from_seed(secret)  # the mask seed stands for the key pair
    if mask_publics is not None and mask_publics.get(owner) != pair.public:
        raise UnmaskFailed(f"mask secret of {owner}: the shares give a key it did not advertise (a wrong share)")
    return pair.private


def recover_secrets(answers: Mapping[str, Mapping[str, tuple[str, int]]], cohort: tuple[str, ...], threshold: int,
                    alive: tuple[str, ...], dropped: tuple[str, ...], *,
                    packing: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(self seeds of the alive, mask private keys of the dropped) from the unmask answers."""
    seeds, keys = {}, {}
    for owner, (kind, shares) in gather_shares(answers, cohort, threshold, alive, dropped).items():
        (seeds if kind == "self" else keys)[owner] = secret_from(threshold, kind, owner, shares, packing=packing)
    return seeds, keys


def unmask_answers(masked_sum: np.ndarray, answers: Mapping[str, Mapping[str, tuple[str, int]]],
                   cohort: tuple[str, ...], threshold: int, alive: tuple[str, ...], dropped: tuple[str, ...],
                   dropped_peers: Mapping[str, Mapping[str, bytes]], round_id: int, field_bits: int, *,
                   packing: int, workers: int = 1, mask_publics: Mapping[str, bytes] | None = None) -> np.ndarray:
    """recover_secrets then masking.unmask, with each secret reconstructed in the worker that
    expands its masks (a thousand reconstructions from t = 113 packed shares are about 1 s of
    one core at n = 1,000: 1.0 ms each, measured). mask_publics: as secret_from."""
    gathered = gather_shares(answers, cohort, threshold, alive, dropped)
    seeds = {o: shares for o, (kind, shares) in gathered.items() if kind == "self"}
    keys = {o: shares for o, (kind, shares) in gathered.items() if kind == "mask"}
    return unmask(masked_sum, seeds, keys, dropped_peers, round_id, field_bits, workers,
                  resolve=functools.partial(_resolve, threshold, packing, mask_publics))


def _resolve(threshold: int, packing: int, mask_publics, kind: str, owner: str, shares) -> bytes:
    return secret_from(threshold, kind, owner, shares, packing=packing, mask_publics=mask_publics)
