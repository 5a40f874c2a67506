"""A secure round under distributed DP: the round's SecAggSpec gains the discrete Gaussian's
parameters (coordinator/dp/distributed.py), sized from the round's privacy plan and its stages.

The noise is calibrated for the fewest masked inputs the round can commit with, the lowest
quorum of the stages up to the mask stage (a later stage only asks those who answered the one
before; the unmask stage's responders add no inputs, and its quorum starts at 1 until t is
known, so it must not count): a round that loses devices down to that quorum still
carries the full noise, and one that keeps more carries more. With secure_aggregation.corrupt
> 0, the ceil(corrupt * asked) inputs that may come from colluders, who can leave their noise
out, are not counted (dp/distributed.py, honest_inputs). The field is sized for every device
asked.
"""

from __future__ import annotations

import dataclasses
import logging

from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.shared_encoding import subset_size

from ..dp.distributed import honest_inputs, params_for
from ..dp.round import RoundPlan
from .stages import UNMASK_STAGE

log = logging.getLogger("fedge.coordinator.privacy")


def private_spec(spec: SecAggSpec, plan: RoundPlan | None, machine, dimension: int, field_bits: int,
                 corrupt: float = 0.0) -> SecAggSpec:
    """`spec` with the round's dp_gamma, dp_sigma and dp_clip_norm, and field_bits = bits = the
    configured secure_aggregation.bits; `spec` as it was without a distributed plan."""
    if plan is None or plan.mechanism != "distributed":
        return spec
    d = subset_size(dimension, spec)
    min_inputs = min(lim.quorum for lim in machine.limits[:UNMASK_STAGE])
    # config.py checked that the configured quorums leave some: the round's are no lower
    noised = honest_inputs(min_inputs, len(machine.selected), corrupt)
    p = params_for(plan.noise_multiplier, plan.clip_norm, spec.clip_range, d, noised, len(machine.selected),
                   field_bits, count_stddev=plan.count_stddev if plan.adaptive else 0.0)
    log.info("round %d: distributed DP, %d bits a coordinate, gamma=%.4g, sigma=%.4g per device for >= %d noised "
             "inputs of %d (z_eff=%.4f, P(wrap) <= 2^%.0f%s)", machine.round_id, field_bits, p.gamma, p.sigma, noised,
             min_inputs,
             p.noise_multiplier, p.wrap_log2, f", S={plan.clip_norm:.4g}, count scale {p.count_scale}"
             if p.count_scale else "")
    return dataclasses.replace(spec, bits=field_bits, field_bits=field_bits, dp_gamma=p.gamma, dp_sigma=p.sigma,
                               dp_clip_norm=plan.clip_norm, dp_count_scale=p.count_scale)
