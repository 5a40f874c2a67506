"""The accepted updates a round's aggregate left out, for the operator: each kind is logged
with its device ids, counted in a metric, and tallied per device for this process.

    excluded   a norm over the norm bound's exclusion bound (robust/norm_bound.py)
    screened   the guard set's screening (robust/screening.py)
    sign_split the gated sign split's minority ([robust.sign], robust/sign_split.py)

And the updates it kept at much less weight than they claimed: a claim the norm bound's relative
cap cut by more than NOTED_CUT (robust/norm_bound.py) is counted (fedge_claims_cut_total) and
its device logged, at most once per CUT_LOG_ROUNDS rounds each: a device that claims 100x every
round would otherwise fill the log, and without either it was invisible.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from .robust.norm_bound import NOTED_CUT

log = logging.getLogger("fedge.coordinator")

CUT_LOG_ROUNDS = 100
_CUT_MEMORY = 10_000  # devices remembered for the cut log's rate limit before old entries go
WHY = {"excluded": "the norm bound (a norm over its exclusion bound)", "screened": "the guard set",
       "sign_split": "the sign split (a sign-statistics minority far from the rest)"}


@dataclass
class LeftOut:
    excluded: Counter[str] = field(default_factory=Counter)  # device id -> updates left out
    screened: Counter[str] = field(default_factory=Counter)
    sign_split: Counter[str] = field(default_factory=Counter)
    cut_logged: dict[str, int] = field(default_factory=dict)  # device id -> round its cut was last logged
    noted_round: int | None = None  # the round (async: buffer) last noted

    def note(self, round_id: int, aggregator, metrics) -> None:
        """After the aggregate is taken: read what `aggregator` left out (its excluded_ids,
        screened_ids and sign_split_ids, where it has them) into the log, the metrics and the tallies.
        Once per round: a sync round whose commit failed (a full disk) aggregates again at the next
        tick (rounds.py), and its left-out updates were counted twice."""
        if round_id == self.noted_round:
            return
        self.noted_round = round_id
        for kind, why in WHY.items():
            if ids := getattr(aggregator, f"{kind}_ids", None):
                shown = ", ".join(str(d) for d in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
                log.info("round %d: %s left %d of %d updates out of the aggregate: %s", round_id, why,
                         len(ids), aggregator.count, shown)
                getattr(metrics, kind).inc(len(ids))
                getattr(self, kind).update(str(d) for d in ids)
        self._note_cuts(round_id, getattr(aggregator, "weight_cut", None) or [], metrics)

    def _note_cuts(self, round_id: int, cuts: list, metrics) -> None:
        """Count the claims cut (id, claim, cap) and log the devices not logged in CUT_LOG_ROUNDS."""
        if not cuts:
            return
        metrics.claims_cut.inc(len(cuts))
        fresh = [(str(d), claim, cap) for d, claim, cap in cuts
                 if round_id - self.cut_logged.get(str(d), round_id - CUT_LOG_ROUNDS) >= CUT_LOG_ROUNDS]
        if len(self.cut_logged) > _CUT_MEMORY:
            self.cut_logged = {d: r for d, r in self.cut_logged.items() if round_id - r < CUT_LOG_ROUNDS}
        for device, _, _ in fresh:
            self.cut_logged[device] = round_id
        if fresh:
            shown = ", ".join(f"{d} claimed {claim:g}, weighted {cap:g}" for d, claim, cap in fresh[:20])
            log.info("round %d: the norm bound's weight cap (weight_multiplier x the median claim) cut %d claim(s) "
                     "by more than %gx: %s%s (each device logged at most once per %d rounds)", round_id, len(fresh),
                     NOTED_CUT, shown, f" and {len(fresh) - 20} more" if len(fresh) > 20 else "", CUT_LOG_ROUNDS)
