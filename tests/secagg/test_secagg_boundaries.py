"""The secure round's decisions at their documented boundaries (benchmarks/results/
2026-12-06-mutation4-privacy: the mutants the tests did not see): a stage minimum above the
devices a round wants, the lowest quorum the distributed noise is calibrated for, and the blame
rule for a sender whose shares too few survivors could open, and the conditional rounding's bound
where its second branch is the smaller. Oracles: each rule as its
docstring states it, written as a plain predicate, and the paper's z_eff by a plain loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.dp.round import RoundPlan
from fedge.coordinator.rounds import Limits
from fedge.coordinator.secagg.private import private_spec
from fedge.coordinator.secagg.round_state import SecAggRound
from fedge.coordinator.secagg.stages import secagg_limits
from fedge.edge_runtime.kernel.secagg import ddg
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.recovery import LIARS, UnmaskFailed
from tests.coordinator.test_dp_distributed import _paper_z_eff


def _sa(share_min=0, mask_min=0, unmask_min=0):
    return SimpleNamespace(share_min=share_min, mask_min=mask_min, unmask_min=unmask_min,
                           deadline_of=lambda stage: 30.0)


@pytest.mark.parametrize("wanted,quorum,share_min,mask_min,unmask_min", [
    (3, 2, 5, 0, 0), (3, 2, 0, 4, 9), (10, 6, 8, 12, 0), (4, 4, 4, 4, 4), (5, 2, 0, 0, 0)])
def test_a_stage_minimum_above_the_devices_wanted_is_lowered_to_them(wanted, quorum, share_min, mask_min,
                                                                    unmask_min):
    """stages.secagg_limits: share and mask need min(their minimum, wanted), or the round's quorum
    when unset; unmask min(its minimum, wanted), or 1. A minimum above the devices a round wants
    (fewer eligible than clients_per_round) would put the stage out of reach of every round."""
    limits = secagg_limits(wanted, quorum, 60.0, _sa(share_min, mask_min, unmask_min))
    expected = [quorum] + [min(m, wanted) if m else quorum for m in (share_min, mask_min)] + \
               [min(unmask_min, wanted) if unmask_min else 1]
    assert [lim.quorum for lim in limits] == expected
    assert all(lim.target == wanted for lim in limits)


@pytest.mark.parametrize("quorums", [(5, 8, 8, 1), (8, 5, 8, 1), (8, 8, 5, 1)])
def test_the_noise_is_calibrated_for_the_lowest_quorum_of_the_three_stages_before_unmask(quorums):
    """secagg/private.py: the fewest masked inputs a round can commit with is the lowest quorum
    of the stages up to the mask stage, whichever of the three it is (the unmask stage's 1 does
    not count); the sigma announced reaches z for a sum of 5 inputs and is the smallest that does."""
    d, z, clip = 610, 1.0, 0.5
    base = SecAggSpec(bits=16, field_bits=16, clip_range=2.0 / math.sqrt(d))
    plan = RoundPlan(1000, 10, z, clip, 10, 1e-6, 5.0, 0.1, mechanism="distributed")
    machine = SimpleNamespace(round_id=1, selected=tuple(f"d{i}" for i in range(10)),
                              limits=tuple(Limits(10, q, 60.0) for q in quorums))
    spec = private_spec(base, plan, machine, d, 16)
    assert _paper_z_eff(spec.dp_sigma, 5, clip / spec.dp_gamma, d) >= z * (1 - 1e-9)
    assert _paper_z_eff(spec.dp_sigma, 4, clip / spec.dp_gamma, d) < z


def _blamed(holders: int, t: int, reports: int) -> set[str]:
    """SecAggRound.unmasked_sum's blame on one sender "x" whose shares `holders` survivors hold
    and `reports` of them could not open; the unmask itself then fails (no answers were given)."""
    spec = SimpleNamespace(keep_fraction=1.0, rotation_seed=0, count_coordinates=0, field_bits=16,
                           distributed_dp=False)
    alive = tuple(f"s{i}" for i in range(holders))
    r = SecAggRound(1, spec, "", 0, {"w": (2,)}, None, cohort=(*alive, "x"), t=t, alive=alive,
                    delivered={s: ("x",) for s in alive},
                    unheld={s: frozenset({"x"}) for s in alive[:reports]},
                    masked={s: np.zeros(2, np.uint32) for s in alive})
    with pytest.raises(UnmaskFailed):
        r.unmasked_sum()
    return r.blamed


@pytest.mark.parametrize("holders,t,reports", [(6, 3, 3), (6, 3, 4), (4, 3, 2), (4, 3, 3), (5, 3, 2), (7, 3, 5)])
def test_a_sender_is_blamed_only_when_fewer_than_t_holders_are_left_and_more_than_liars_reported(holders, t,
                                                                                                reports):
    """round_state.py's rule, written out: blamed when holders - reports < t (the round cannot be
    unmasked because of it) and reports > LIARS (2 reports could all be lies). At the edges:
    6 holders, t 3, 3 reports leave exactly t (not blamed); 4 holders, 2 reports leave 2 < t but
    2 reports are LIARS (not blamed)."""
    assert LIARS == 2
    expected = {"x"} if holders - reports < t and reports > LIARS else set()
    assert _blamed(holders, t, reports) == expected


@pytest.mark.parametrize("a,d,beta,second", [(1.0, 1, 1e-6, True), (0.5, 4, 1e-3, True), (0.5, 1, 1e-9, True),
                                             (3.0, 16, 1e-9, False), (100.0, 1000, math.exp(-0.5), False)])
def test_the_rounded_bound_takes_a_plus_sqrt_d_where_that_is_the_smaller(a, d, beta, second):
    """ddg.rounded_bound is Kairouz et al. 2021, Thm. 1's min(sqrt(a^2 + d/4 + sqrt(2 ln(1/beta))
    (a + sqrt(d)/2)), a + sqrt(d)). At the default beta = e^-0.5 the first is always the smaller;
    a smaller beta makes the second one the bound, which the sensitivity must then use."""
    first = math.sqrt(a * a + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2))
    assert ddg.rounded_bound(a, d, beta) == pytest.approx(min(first, a + math.sqrt(d)), rel=1e-12)
    assert (a + math.sqrt(d) < first) is second  # both branches are reached
