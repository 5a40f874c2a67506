"""run.json's summary parts that read the coordinator after a run."""

from __future__ import annotations

from collections import Counter

from fedge.coordinator.server import Coordinator


def left_out_summary(left_out: Counter[str], reports: int, attackers) -> dict[str, int]:
    """Updates the aggregates left out (`co.left_out.screened`: the guard set, robust/screening.py;
    `co.left_out.excluded`: the norm bound's exclusion; `co.left_out.sign_split`: the sign split,
    robust/sign_split.py), honest and attacking, and the updates the rounds
    accepted in all (`reports`: summed over the run's round records)."""
    bad = sum(n for d, n in left_out.items() if d in attackers)
    return {"honest": sum(left_out.values()) - bad, "attackers": bad, "reports": reports}


def privacy_summary(coordinator: Coordinator) -> dict | None:
    """run.json's summary.privacy: None without privacy."""
    budget = coordinator.privacy
    if not budget.enabled:
        return None
    refused = budget.exhausted
    return {"epsilon": budget.spent(), "delta": budget.config.delta, "target_epsilon": budget.config.target_epsilon,
            "rounds_charged": len(budget.ledger()), "refused": None if refused is None else refused.why}
