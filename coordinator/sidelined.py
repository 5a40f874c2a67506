"""Devices left out of the next rounds for a while after so few survivors could open their
secure-aggregation shares that the round could not be unmasked, or their shares decoded to no
secret they committed to (secagg_bad_shares; the rules are round_state.unmasked_sum's), or
the identity directory did not verify their key advertisement's signature
(secagg_bad_signature: misprovisioned, or someone holding a listed id without its key; drawn
again, it trained in full to be refused every round, and at its shard group's floor ended the
whole round each time). Such a device can spoil every secure round it is drawn into, and a
device that wants to cannot be told to stop by a check-in rule (it can always check in with
something new), so the clock decides: 10 minutes after its first offence, doubling with each,
at most a day. In memory only: a restart forgets, and the device's next offence starts the
count again. A SIGHUP reload of the identity directory that adds or re-keys a device left out for
a bad signature lets it in again at once (pardon): the operator fixed its key, and waiting out a
doubled wait (up to a day) for that would keep a repaired device idle. Pure; the caller owns the
clock."""

from __future__ import annotations

from .secagg.round_state import BAD_SHARES, BAD_SIGNATURE
from .secagg.shell import SecAggRejected

FIRST_S = 600.0  # as long as a device that declined rests ([coordinator] pace_declined_s's default)
MAX_S = 86_400.0


class Sidelined:
    def __init__(self) -> None:
        self.until: dict[str, float] = {}  # device -> clock time it may be selected again
        self.offences: dict[str, int] = {}
        self.last_reason: dict[str, str] = {}  # device -> the reason of its latest offence

    def offence(self, device_id: str, now: float, reason: str = BAD_SHARES, what: str = "") -> SecAggRejected:
        """Record one; returns the rejection the server counts and logs (one line: the device,
        what it did, and for how long it is left out). `what` defaults to wrong shares' words."""
        n = self.offences.get(device_id, 0) + 1
        self.offences[device_id] = n
        self.last_reason[device_id] = reason
        seconds = min(MAX_S, FIRST_S * 2.0 ** min(n - 1, 60))
        self.until[device_id] = now + seconds
        what = what or (f"the secure-aggregation shares of {device_id} were wrong (too few could open them, or "
                        "they decode to no secret it committed to)")
        return SecAggRejected(reason, f"{what}: left out of rounds for {seconds:.0f} s")

    def after_refusal(self, rejected: SecAggRejected, device_id: str | None, now: float) -> SecAggRejected:
        """What the server counts for a secure-round reply the shell refused: a key advertisement
        the identity directory did not verify is an offence (its sender is the reply's device:
        shell._admit refuses another sender first); any other refusal is returned as it is. The
        stage stops expecting the device at its refusal (shell.admit), so whatever it sends after
        in that round is `stale_round`: one round is one offence."""
        if rejected.reason != BAD_SIGNATURE or device_id is None or rejected.key_changed:
            return rejected  # key_changed: the operator re-keyed it mid-round; its next round checks the new key
        return self.offence(device_id, now, BAD_SIGNATURE, f"the key advertisement of {device_id} is not signed by "
                                                           "its key in the identity directory")

    def after_secure_sum(self, shell, now: float) -> list[tuple[str, SecAggRejected]]:
        """(device, rejection) for the server to count after a secure round's sum: each sender too
        few could open the shares of, sidelined; each holder whose unmask answer was left out
        (recovery.wrong_holders), named only: a dealer that dealt it a wrong share looks the same."""
        named = [(d, SecAggRejected(BAD_SHARES, f"the unmask answer of {d} did not fit the others' and was left "
                                                "out (its shares, or the ones dealt to it, were wrong)"))
                 for d in getattr(shell, "left_out", ())]
        return [(d, self.offence(d, now)) for d in getattr(shell, "blamed", ())] + named

    def pardon(self, devices: set[str], reason: str, now: float) -> list[str]:
        """Let in at once those of `devices` left out at `now` whose latest offence was `reason`;
        their offence count stays (offending again doubles on from it). Returns them, sorted."""
        pardoned = sorted(d for d in devices if self.until.get(d, now) > now and self.last_reason.get(d) == reason)
        for d in pardoned:
            del self.until[d]
        return pardoned

    def keep(self, devices: list[str], now: float) -> list[str]:
        """`devices` without the ones left out at `now`."""
        if not self.until:
            return devices
        left_out = self.active(now)
        return [d for d in devices if d not in left_out]

    def active(self, now: float) -> set[str]:
        """The devices left out at `now`."""
        return {d for d, until in self.until.items() if until > now}
