"""The secure round's four stages for the round machine (rounds.py): each asks the devices
that answered the stage before, so a device that drops between stages is not asked again."""

from __future__ import annotations

from ..rounds import Limits, Stage

ADVERTISE, SHARE, MASK, UNMASK = "advertise", "share", "mask", "unmask"

SECAGG = (
    Stage(ADVERTISE, request="SecAggTask", reply="KeyAdvertisement", target="clients_per_round", quorum="min_reports"),
    Stage(SHARE, request="KeyDirectory", reply="EncryptedShares", target="clients_per_round", quorum="min_reports"),
    Stage(MASK, request="ShareDelivery", reply="MaskedInput", target="clients_per_round", quorum="min_reports"),
    Stage(UNMASK, request="UnmaskRequest", reply="UnmaskResponse", target="clients_per_round", quorum="min_reports"),
)


def secagg_limits(wanted: int, quorum: int, round_deadline_s: float, sa) -> tuple[Limits, ...]:
    """Each stage's Limits (sa: SecAggConfig). The first stage trains (the round's deadline and
    quorum); share and mask need the round's quorum unless set (mask: fewer masked inputs
    would be a sum of too few devices); unmask starts at its own minimum (or 1) and is raised
    to the graph's t when the share stage fixes the cohort (SecAggShell.send, rounds.with_quorum).
    A minimum above the devices a round wants (fewer eligible than clients_per_round) is
    lowered to them (unmask: to the cohort, never below t); fewer devices left to ask than a
    stage's minimum put it out of reach, and the machine abandons the round."""
    def floor(minimum: int) -> int:
        return min(minimum, wanted) if minimum else quorum

    return (Limits(wanted, quorum, round_deadline_s),
            Limits(wanted, floor(sa.share_min), sa.deadline_of(SHARE)),
            Limits(wanted, floor(sa.mask_min), sa.deadline_of(MASK)),
            Limits(wanted, min(sa.unmask_min, wanted) or 1, sa.deadline_of(UNMASK)))


UNMASK_STAGE = 3  # index of UNMASK in SECAGG


def unmask_threshold(unmask_min: int, t: int) -> int:
    """Unmask responders needed: at least t (fewer cannot give any secret t shares)."""
    return max(unmask_min, t)
