"""Pace steering: when a device with nothing to do should check in again. Pure; no clock.

A device that checks in and gets no task is told `retry_after_s` instead of being left to
poll at its own rate. The delay is what is left of the open round (it cannot be picked
before the next one), or a longer backoff after a decline, plus a jitter that spreads the
fleet so a thousand devices do not return in the same second. The jitter is a hash of
(seed, device, round), not a draw from an RNG: the same device asking twice in one round
hears the same answer, and a test can predict it.
"""

from __future__ import annotations

import hashlib

from .rounds import DECLINED, Phase, RoundMachine

NO_ROUND = "no_round"  # nothing open; come back when the next round is likely
NOT_SELECTED = "not_selected"  # a round is open without you
REPORTED = "reported"  # your update for the open round is in
# DECLINED ("declined"): you declined this round; the round table emits it, so it lives in rounds.py
INELIGIBLE = "ineligible"  # your check-in said you cannot train now
REASONS = (NO_ROUND, NOT_SELECTED, REPORTED, DECLINED, INELIGIBLE)

# How soon a device that cannot train may have changed its mind, by its own reason (seconds;
# capped by declined_s). CPU load and memory come and go within a minute; a hot board cools
# in minutes; a battery charges in tens of minutes. Reasons not listed wait declined_s.
RECHECK_S = {"cpu_busy": 30.0, "low_memory": 60.0, "too_hot": 120.0, "not_charging": 120.0,
             "metered_link": 300.0, "link_not_allowed": 300.0, "battery_low": 600.0}


def reason_for(machine: RoundMachine | None, device_id: str, eligible: bool) -> str | None:
    """Why a device that checks in gets no task now; None when it is selected and still owes
    an answer (it probably lost its task: send it again)."""
    if machine is not None and machine.expects(device_id):
        return None
    if not eligible:
        return INELIGIBLE
    if machine is None or machine.phase != Phase.TRAINING:
        return NO_ROUND
    if device_id in machine.declined:
        return DECLINED
    if device_id in machine.reported:
        return REPORTED
    return NOT_SELECTED


def jitter_fraction(seed: int, device_id: str, round_id: int) -> float:
    """A number in [0, 1) fixed by (seed, device, round) and spread uniformly over devices."""
    digest = hashlib.blake2b(f"{seed}|{round_id}|{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def retry_after(
    reason: str,
    remaining_s: float,
    *,
    idle_s: float,
    declined_s: float,
    jitter_s: float,
    max_s: float,
    jitter: float,
    device_reason: str = "",
) -> float:
    """Seconds until the device should check in again.

    remaining_s: time left in the open round (ignored for NO_ROUND); idle_s: the wait when
    no round is open; declined_s: the backoff after a decline or an ineligible check-in;
    jitter: jitter_fraction(...) in [0, 1), scaled by jitter_s. device_reason: the device's
    own ("cpu_busy", "aborted:too_hot", ...): it shortens the backoff to RECHECK_S's time.
    The result is in (0, max_s].
    """
    if reason not in REASONS:
        raise ValueError(f"unknown pace reason {reason!r}; expected one of {REASONS}")
    remaining = max(0.0, remaining_s)
    if reason == NO_ROUND:
        base = idle_s
    elif reason in (DECLINED, INELIGIBLE):
        cause = device_reason.removeprefix("aborted:")
        base = max(min(declined_s, RECHECK_S.get(cause, declined_s)), remaining)
    else:
        base = remaining
    # A floor of one second: "come back in 0 s" invites a tight check-in loop.
    return min(max_s, max(1.0, base + jitter_s * jitter))
