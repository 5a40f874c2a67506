"""The coordinator's side of the unmask stage: secrets back from the survivors' shares."""

from __future__ import annotations

from collections.abc import Mapping

from . import shamir
from .keys import keypair_from_seed
from .session import point_of


class UnmaskFailed(ValueError):
    """Fewer than t shares for a secret the sum needs: the round cannot be unmasked."""


def recover_secrets(answers: Mapping[str, Mapping[str, tuple[str, int]]], cohort: tuple[str, ...], threshold: int,
                    alive: tuple[str, ...], dropped: tuple[str, ...]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(self seeds of the alive, mask private keys of the dropped) from the unmask answers
    (answering device -> owner -> (kind, share value)). A share of the wrong kind for its owner
    is ignored: a device reveals only one kind per owner, and the coordinator must not mix."""
    cohort = tuple(sorted(cohort))
    wanted = {d: "self" for d in alive} | {d: "mask" for d in dropped}
    shares: dict[str, list[shamir.Share]] = {d: [] for d in wanted}
    for holder, revealed in answers.items():
        x = point_of(holder, cohort)
        for owner, (kind, y) in revealed.items():
            if wanted.get(owner) == kind:
                shares[owner].append(shamir.Share(x, y))
    seeds, keys = {}, {}
    for owner, kind in wanted.items():
        if len(shares[owner]) < threshold:
            raise UnmaskFailed(f"{len(shares[owner])} {kind} shares of {owner}, need {threshold}")
        try:
            secret = shamir.int_to_secret(shamir.reconstruct(shares[owner], threshold))
        except ValueError as exc:  # a share that was not the owner's (a wrong value from some holder)
            raise UnmaskFailed(f"{kind} secret of {owner}: {exc}") from None
        if kind == "self":
            seeds[owner] = secret
        else:  # the mask seed stands for the key pair
            keys[owner] = keypair_from_seed(secret).private
    return seeds, keys
