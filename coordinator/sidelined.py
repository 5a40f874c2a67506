"""Devices left out of the next rounds for a while after so few survivors could open their
secure-aggregation shares that the round could not be unmasked, or their shares decoded to no
secret they committed to (secagg_bad_shares; the rules are round_state.unmasked_sum's). Such a
device can spoil every secure round it is drawn into, and a device that wants to cannot be
told to stop by a check-in rule (it can always check in with something new), so the clock
decides: 10 minutes after its first offence, doubling with each, at most a day. In memory only:
a restart forgets, and the device's next offence starts the count again. Pure; the caller owns
the clock."""

from __future__ import annotations

from .secagg.shell import SecAggRejected

BAD_SHARES = "secagg_bad_shares"

FIRST_S = 600.0  # as long as a device that declined rests ([coordinator] pace_declined_s's default)
MAX_S = 86_400.0


class Sidelined:
    def __init__(self) -> None:
        self.until: dict[str, float] = {}  # device -> clock time it may be selected again
        self.offences: dict[str, int] = {}

    def offence(self, device_id: str, now: float) -> SecAggRejected:
        """Record one; returns the rejection the server counts and logs (secagg_bad_shares)."""
        n = self.offences.get(device_id, 0) + 1
        self.offences[device_id] = n
        seconds = min(MAX_S, FIRST_S * 2.0 ** min(n - 1, 60))
        self.until[device_id] = now + seconds
        return SecAggRejected(BAD_SHARES, f"the secure-aggregation shares of {device_id} were wrong (too few could "
                                          "open them, or they decode to no secret it committed to): left out of "
                                          f"rounds for {seconds:.0f} s")

    def after_secure_sum(self, shell, now: float) -> list[tuple[str, SecAggRejected]]:
        """(device, rejection) for the server to count after a secure round's sum: each sender too
        few could open the shares of, sidelined; each holder whose unmask answer was left out
        (recovery.wrong_holders), named only: a dealer that dealt it a wrong share looks the same."""
        named = [(d, SecAggRejected(BAD_SHARES, f"the unmask answer of {d} did not fit the others' and was left "
                                                "out (its shares, or the ones dealt to it, were wrong)"))
                 for d in getattr(shell, "left_out", ())]
        return [(d, self.offence(d, now)) for d in getattr(shell, "blamed", ())] + named

    def keep(self, devices: list[str], now: float) -> list[str]:
        """`devices` without the ones left out at `now`."""
        if not self.until:
            return devices
        left_out = self.active(now)
        return [d for d in devices if d not in left_out]

    def active(self, now: float) -> set[str]:
        """The devices left out at `now`."""
        return {d for d, until in self.until.items() if until > now}
