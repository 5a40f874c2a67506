"""The values a Store keeps and gives back: an open round, its accepted updates and declines, devices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredUpdate:
    seq: int  # acceptance order within the round (shared with declines)
    device_id: str
    update_id: str
    digest: str  # validation.payload_digest: sha256 of the payload (and control)
    num_examples: int
    payload: bytes
    control: bytes = b""  # Update.control (SCAFFOLD's Δc_i); empty = none
    reported_norm: float | None = None  # Update.metrics["norm"] (admission.reported_norm): DP's adaptive clip


@dataclass(frozen=True)
class StoredDecline:
    seq: int
    device_id: str
    reason: str


@dataclass(frozen=True)
class StoredRound:
    """An open round as begin_round wrote it, plus what it has received since, in order."""

    round_id: int
    model_version: int
    selected: tuple[str, ...]
    tasks: dict[str, str]  # device -> task id
    target: int
    quorum: int
    started_wall: float  # seconds since the epoch
    deadline_wall: float
    events: tuple[StoredUpdate | StoredDecline, ...] = ()
    privacy: dict | None = None  # the round's dp RoundPlan as JSON; None without DP
    # A sharded round's device -> shard (sharding/assign.py), written with the round by
    # PostgresStore and read back by the shard tables (sharding/tables.py); None without shards.
    shards: dict[str, int] | None = None


@dataclass(frozen=True)
class StoredDevice:
    device_id: str
    last_seen_wall: float
    eligible: bool
    reason: str
    num_examples: int


# A round plan's fields that only the open round may keep (dp/round.py): the noise key lets a
# restart replay the round's noise bit for bit, and lets anyone holding the state file later
# draw that noise again and subtract it from the released model. A store drops them when the
# round closes, in the closing transaction, and never writes them to the privacy ledger.
OPEN_ROUND_SECRETS = ("noise_key",)


def closed_plan(plan: dict) -> dict:
    """A round's plan (dp RoundPlan JSON) as a closed round and the ledger keep it: less its secrets."""
    return {k: v for k, v in plan.items() if k not in OPEN_ROUND_SECRETS}
