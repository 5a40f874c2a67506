"""The accepted updates a round's aggregate left out, for the operator: each kind is logged
with its device ids, counted in a metric, and tallied per device for this process.

    excluded   a norm over the norm bound's exclusion bound (robust/norm_bound.py)
    screened   the guard set's screening (robust/screening.py)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("fedge.coordinator")

WHY = {"excluded": "the norm bound (a norm over its exclusion bound)", "screened": "the guard set"}


@dataclass
class LeftOut:
    excluded: Counter[str] = field(default_factory=Counter)  # device id -> updates left out
    screened: Counter[str] = field(default_factory=Counter)

    def note(self, round_id: int, aggregator, metrics) -> None:
        """After the aggregate is taken: read what `aggregator` left out (its excluded_ids and
        screened_ids, where it has them) into the log, the metrics and the tallies."""
        for kind, why in WHY.items():
            if ids := getattr(aggregator, f"{kind}_ids", None):
                shown = ", ".join(str(d) for d in ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
                log.info("round %d: %s left %d of %d updates out of the aggregate: %s", round_id, why,
                         len(ids), aggregator.count, shown)
                getattr(metrics, kind).inc(len(ids))
                getattr(self, kind).update(str(d) for d in ids)
