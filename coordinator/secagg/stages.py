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


def secagg_limits(wanted: int, quorum: int, round_deadline_s: float, stage_deadline_s: float) -> tuple[Limits, ...]:
    """The first stage trains (the round's deadline); the others only compute and talk. Every
    stage needs the round's quorum: fewer masked inputs would be a sum of too few devices."""
    return (Limits(wanted, quorum, round_deadline_s),) + (Limits(wanted, quorum, stage_deadline_s),) * 3
