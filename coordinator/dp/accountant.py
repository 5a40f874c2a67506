"""Privacy accounting with Google's dp-accounting: a ledger of rounds, its ε, and the refusal check.

Each committed (or noised-then-abandoned) round is one `RoundCharge`: the sampling event the
coordinator really used (how many devices it asked, out of how many eligible ones) around a
Gaussian mechanism with noise multiplier z. The ledger composes them; ε(δ) comes from

    rdp   RdpAccountant: the quick, conservative check before each round (the default)
    pld   PLDAccountant: tighter (10-60% here), for reports; with z below PLD_MIN_NOISE the
          RDP bound is charged instead, with a warning (see there)

Sampling as the sampler draws it:
    fixed    a cohort of m devices without replacement from n eligible: SampledWithoutReplacementDpEvent,
             which dp-accounting defines for the replace-one neighbouring relation (a device's data
             swapped for another's, the population size public). Over-selection counts: m is the
             number of devices asked, not the number that answered. Dropouts do not help.
    poisson  each of n devices independently with probability q = m / n: PoissonSampledDpEvent
             (add-or-remove-one).

The noise multiplier in a dp-accounting Gaussian event is the noise's standard deviation over
the L2 sensitivity *under the event's neighbouring relation*. fedge's z is the noise over the
clip S (the noise is N(0, (zS)^2), as in McMahan et al. 2018). Adding or removing one device
moves the clipped sum by at most S, so a Poisson round charges z; replacing one device's
update by another's moves it by up to 2S (||u - u'|| <= ||u|| + ||u'||), so a fixed-size round
charges z / 2 (`sensitivity_factor`). The same holds for adaptive clipping's noised bit count
(its bits move by 1/2 added or removed, by 1 replaced), so the factor applies to the combined z.

With shard groups (sharding/secure_dp.py) each group's sum carries z on its own and a round
is charged as one group's: a device is in one group, and a replacement moves two groups' sums
by S each, sqrt(2) S together, within the 2S above. RoundPlan.groups records each group's noise.
This assumes what the rest of the accounting does: a neighbouring population replaces one
device's data, not its identity, so the groups (a function of device ids and the sample) are
the same on both sides; and a group with more survivors than its calibrated minimum carries
extra independent noise, a post-processing of the calibrated release.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import dp_accounting as dpa
from dp_accounting import pld, rdp

from fedge.edge_runtime.kernel.errors import ConfigError

from .compose import composed
from .config import ACCOUNTANTS, SAMPLINGS


@dataclass(frozen=True)
class RoundCharge:
    """One round's privacy cost: `cohort` devices asked out of `population` eligible, noise z."""

    population: int
    cohort: int
    noise_multiplier: float
    sampling: str = "fixed"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling {self.sampling!r}: choose one of {SAMPLINGS}")
        if not 1 <= self.cohort <= self.population:
            raise ValueError(f"need 1 <= cohort ({self.cohort}) <= population ({self.population})")
        if not self.noise_multiplier > 0:
            raise ValueError("a DP round needs noise_multiplier > 0")

    def event(self) -> dpa.DpEvent:
        gaussian = dpa.GaussianDpEvent(self.noise_multiplier / sensitivity_factor(self.sampling))
        if self.sampling == "poisson":
            return dpa.PoissonSampledDpEvent(self.cohort / self.population, gaussian)
        return dpa.SampledWithoutReplacementDpEvent(self.population, self.cohort, gaussian)


def check_method(method: str, sampling: str | None = None) -> None:
    """ValueError naming an accountant that is not one, or PLD with fixed-size sampling:
    dp-accounting 0.6's PLD accountant has no fixed-size (without replacement) sampling event,
    so fedge refuses rather than account a different mechanism than the sampler runs."""
    if method not in ACCOUNTANTS:
        raise ValueError(f"accountant {method!r}: choose one of {ACCOUNTANTS}")
    if method == "pld" and sampling == "fixed":
        raise ValueError("the PLD accountant supports Poisson sampling only; use rdp for fixed-size cohorts")


def sensitivity_factor(sampling: str) -> float:
    """The clipped sum's L2 sensitivity over S under the sampling's neighbouring relation (docstring)."""
    return 2.0 if sampling == "fixed" else 1.0


def _relation(sampling: str) -> dpa.NeighboringRelation:
    return dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE


@contextmanager
def _quiet_absl():
    """dp-accounting logs a warning for every low RDP order that does not converge (and drops
    that order, which is what it should do); keep them out of the service's log."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def epsilon(charges: Sequence[RoundCharge], delta: float, method: str = "rdp") -> float:
    """ε(δ) of the composition of `charges` (0.0 for an empty ledger)."""
    check_method(method)
    if not charges:
        return 0.0
    samplings = {c.sampling for c in charges}
    if len(samplings) != 1:
        raise ValueError(f"one ledger cannot mix samplings {sorted(samplings)}: their neighbouring relations differ")
    sampling = samplings.pop()
    check_method(method, sampling)
    if method == "pld" and (low := min(c.noise_multiplier for c in charges)) < PLD_MIN_NOISE:
        _say_pld_fallback(low)
        method = "rdp"  # an upper bound on the same ε (looser), in milliseconds
    relation = _relation(sampling)
    fresh = (lambda: rdp.RdpAccountant(neighboring_relation=relation)) if method == "rdp" else \
        (lambda: pld.PLDAccountant(neighboring_relation=relation))
    with _quiet_absl():
        try:
            sampled = float(composed((method, sampling, "sampled"), fresh, charges, RoundCharge.event)
                            .get_epsilon(delta))
            return min(sampled, _unsampled_epsilon(charges, delta)) if sampling == "fixed" else sampled
        except ValueError as exc:
            # dp-accounting 0.6's fixed-size bound takes log1p(-exp(-4 / z^2)), which fails in
            # float64 past z of about 2e8: a named error, not a raw 'math domain error' traceback.
            raise ConfigError(f"privacy: dp-accounting cannot account noise_multiplier "
                              f"{max(c.noise_multiplier for c in charges):g} ({exc}); use a smaller one") from None


# Below this noise multiplier the PLD accountant is not asked: its discretised privacy loss grows
# as 1 / z^2, and so does its time and memory. Measured with dp-accounting 0.6 (one Poisson round,
# delta 1e-5, q in 0.01..1, on 2 shared CPU cores): z = 1: 0.5-0.9 s, 150 MB; z = 0.5: 1-1.8 s,
# 210 MB; z = 0.3: 1.6-3.6 s, 320 MB; z = 0.2: 2.9-4.6 s, 430 MB; z = 0.1: 16 s, 420 MB; z = 0.01:
# over 40 s and about 4 GB, in the coordinator's one loop before each round (the check runs the
# ledger's ε more than once). One round at z = 0.5 already costs ε >= 3 at q = 0.01, so no budget
# worth the name runs below it; there the RDP accountant's bound (valid, looser) is charged.
PLD_MIN_NOISE = 0.5
_said_fallback: set[float] = set()


def _say_pld_fallback(z: float) -> None:
    if z not in _said_fallback:  # once per z and process: the check runs before every round
        _said_fallback.add(z)
        logging.getLogger("fedge.coordinator.privacy").warning(
            "privacy: noise multiplier %g is below %g, where dp-accounting's PLD accountant takes too long and too "
            "much memory to run before each round; ε is RDP's bound instead (valid, looser)", z, PLD_MIN_NOISE)


def _unsampled_epsilon(charges: Sequence[RoundCharge], delta: float) -> float:
    """ε(δ) of the same rounds charged as plain Gaussians (no amplification by sampling): also a
    valid bound for a fixed-size round, which given its cohort is that Gaussian or the same
    output on both sides (Rényi divergence is quasi-convex over the mixture). dp-accounting
    0.6's fixed-size bound loses to it where the cohort is most of the population and z is
    large (7 of 10 devices, one round, delta 1e-6: 0.236 at z = 100 and 0.224 at z = 1e3, where
    the plain Gaussian gives 0.080 and 0.0078), so the smaller of the two is charged."""
    fresh = lambda: rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)  # noqa: E731
    plain = lambda c: dpa.GaussianDpEvent(c.noise_multiplier / sensitivity_factor(c.sampling))  # noqa: E731
    return float(composed(("rdp", "unsampled"), fresh, charges, plain).get_epsilon(delta))


@dataclass(frozen=True)
class BudgetVerdict:
    allowed: bool
    epsilon_after: float  # ε if the proposed round ran
    epsilon_spent: float  # ε of the ledger so far
    why: str = ""


def check_round(ledger: Sequence[RoundCharge], proposed: RoundCharge, target_epsilon: float, delta: float,
                method: str = "rdp") -> BudgetVerdict:
    """May the proposed round run? Refused when ε after it would exceed the target."""
    spent = epsilon(ledger, delta, method)
    after = epsilon([*ledger, proposed], delta, method)
    if after > target_epsilon:
        return BudgetVerdict(False, after, spent, f"privacy budget: ε would be {after:.3f} > target {target_epsilon:g} "
                                                  f"(δ={delta:g}) after {len(ledger) + 1} rounds; spent {spent:.3f}")
    return BudgetVerdict(True, after, spent)


ROUNDS_LEFT_LIMIT = 100_000  # rounds_left searches no further: a result equal to it means "at least"


def rounds_left(ledger: Sequence[RoundCharge], next_charge: RoundCharge, target_epsilon: float, delta: float,
                method: str = "rdp", limit: int = ROUNDS_LEFT_LIMIT) -> int:
    """How many more rounds like `next_charge` fit in the budget (binary search; at most `limit`,
    which then means `limit` or more)."""
    def fits(k: int) -> bool:
        return k == 0 or epsilon([*ledger, *([next_charge] * k)], delta, method) <= target_epsilon
    if not fits(0):
        return 0
    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
