"""run.json's summary parts that read the coordinator after a run."""

from __future__ import annotations

from fedge.coordinator.server import Coordinator


def screened_summary(co: Coordinator, attackers) -> dict[str, int]:
    """Updates the guard set left out of the aggregates (robust/screening.py), honest and
    attacking, and the updates the rounds accepted in all."""
    bad = sum(n for d, n in co.screened.items() if d in attackers)
    return {"honest": sum(co.screened.values()) - bad, "attackers": bad, "reports": sum(r.reports for r in co.history)}


def privacy_summary(coordinator: Coordinator) -> dict | None:
    """run.json's summary.privacy: None without privacy."""
    budget = coordinator.privacy
    if not budget.enabled:
        return None
    refused = budget.exhausted
    return {"epsilon": budget.spent(), "delta": budget.config.delta, "target_epsilon": budget.config.target_epsilon,
            "rounds_charged": len(budget.ledger()), "refused": None if refused is None else refused.why}
