"""How much one accepted update counts in the round's weighted mean. Pure.

FedAvg weights a device by the examples it trained on, and the device says how many: a
claim the coordinator cannot check. Uncapped, one device claiming 2**32 examples becomes the
whole round. So the weight is the claim capped at `max_examples` (CoordinatorConfig), or 1
for every device with `weighting = "equal"`.

Why a fixed cap by default and not one drawn from the fleet's median claim: the weight of
an update must depend on the update alone, so that a restarted coordinator replaying the
stored round (records.resume) rebuilds bit-identical sums, and so that devices which only
check in (cheap, and unchecked) cannot move the cap by moving the median. The default,
100,000, is above any one edge device's local set in our fleets and benchmarks (so it
changes no honest round), and bounds a liar to 100,000 / (100,000 + the honest examples)
of a round instead of all of it; an operator who knows the fleet sets it near the largest
honest device's count, or chooses equal weights where claims cannot be trusted at all.

SCAFFOLD always weighs every update 1 (records.open_round), as the paper's server step does:
its c is the plain mean of the devices' c_i, and the corrections c - c_i that every device
trained with cancel in the mean of the deltas only under those same weights. Weighted by
examples, the large devices' corrections outweighed the rest and left a drift of their own in
every server step; from a pretrained start on Dirichlet 0.1 (heterogeneity benchmark, seed 1)
it took the global model from 86% to chance by round 27, and the devices' divergence guard
declined every task after that (benchmarks/results/2026-12-06-scaffold-pretrained/).
"""

from __future__ import annotations

WEIGHTINGS = ("examples", "equal")


def claim_capped(num_examples: int, max_examples: int, equal: bool = False) -> bool:
    """Whether update_weight counts less than the claim: a claim over the cap (logged and counted
    as fedge_claims_capped_total, so an operator sees a device that claims more than it may)."""
    return not equal and 0 < max_examples < num_examples


def update_weight(num_examples: int, max_examples: int, equal: bool = False) -> float:
    """The weight of an update that claims `num_examples` (> 0): min(claim, cap), or 1.0."""
    if num_examples <= 0:
        raise ValueError(f"num_examples must be > 0, got {num_examples}")
    if equal:
        return 1.0
    return float(min(num_examples, max_examples) if max_examples > 0 else num_examples)
