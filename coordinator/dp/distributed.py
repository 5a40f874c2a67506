"""Distributed DP under secure aggregation: the distributed discrete Gaussian's parameters for a
round, sized so the field never wraps, and the noise multiplier the accountant charges.

Why the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021) and not Skellam (Agarwal et
al. 2021): it has a closed-form concentrated-DP bound for the sum (below) that maps onto the
Gaussian events dp-accounting already composes for central DP, it reuses the randomized
Hadamard rotation secure aggregation already does, and its noise needs no second parameter.

The device's half (clip, scale, rotate, conditional rounding, noise, mod 2^m) is
edge_runtime/kernel/secagg/ddg.py. Here, for a round with

    S        the L2 clip (privacy.clip_norm), c the shared L-inf clip after the rotation
    d        coordinates sent, n_min the fewest masked inputs the round can commit with (the
             lowest stage quorum), n_max the devices asked (over-selection included)
    m        the field bits, which are the bits per coordinate on the wire
    z        the noise multiplier the budget charges (calibrated as for central DP)

the coordinator picks gamma and sigma (per device, integer units):

  privacy  The sum of k >= n_min devices' N_Z(0, sigma^2) noise gives (Kairouz et al. 2021, Thm. 2,
           the L2 branch) rho-zCDP with rho = Delta_2^2 / (2 k sigma^2) + tau d, where Delta_2 is the
           rounded vector's L2 bound (ddg.rounded_bound: S / gamma inflated by rounding) and
           tau = 10 sum_{j=1}^{k-1} exp(-2 pi^2 sigma^2 j / (j + 1)). rho falls as k grows, so
           k = n_min is the worst case: dropouts down to the quorum never weaken the guarantee.
           A Gaussian of multiplier z_eff = (2 rho)^-1/2 has exactly that zCDP, so its RDP curve
           alpha / (2 z_eff^2) dominates the DDG sum's at every order; the subsampled-RDP bound
           that dp-accounting evaluates (Wang, Balle, Kasiviswanathan 2019, for sampling
           without replacement) grows with the base mechanism's RDP, so charging
           SampledWithoutReplacementDpEvent(GaussianDpEvent(z / 2)) with z <= z_eff is sound:
           z and z_eff are relative to one device's L2 bound, and replacing one device's
           vector moves the sum by up to twice that bound, the sensitivity dp-accounting's
           replace-one multiplier is relative to (accountant.py, the central charge alike).
           sigma is the smallest with z_eff >= z (tau d is folded in, never dropped; at the
           sigmas used it is below 1e-100).
  headroom The sum read as a signed integer must stay in [-2^(m-1), 2^(m-1)). The signal is at
           most n_max (c / gamma + 1) per coordinate (the L-inf clip, then rounding up); the
           noise, a sum of at most n_max discrete Gaussians, is sigma sqrt(n_max)-sub-Gaussian
           (Canonne et al. 2020), so over d coordinates P(wrap) <= 2 d exp(-t^2 / (2 n_max sigma^2))
           for the headroom t left above the signal. gamma is the smallest step (finest grid) with
           P(wrap) <= 2^-40.
  adaptive With privacy.target_quantile > 0 each device also sends one count coordinate
  clipping (ddg.count_coordinate): +-kappa/2 for "my norm was within S or not", plus its own
           N_Z(0, sigma^2), outside the rotation. The joint vector's L2 sensitivity is then
           sqrt(Delta_2^2 + kappa^2 / 4), and the same theorem gives rho over d + 1 coordinates.
           As in central DP (dp/round.py), z splits into z_Delta for the update and sigma_b for
           the count, z_Delta^-2 + (2 sigma_b)^-2 = z^-2: sigma is calibrated for z_Delta on the
           update's bound alone, and kappa = sigma sqrt(n_min) / sigma_b (rounded down to an
           even integer, so the count's noise is at least sigma_b) makes the pair's rho at most
           1 / (2 z^2). The count coordinate's signal, n_max kappa / 2, joins the headroom.
  colluders Every bound above counts the noise of the devices in the sum, and a device can send
           any field vector: one that adds no noise, or tells the coordinator what it added (the
           same thing to a coordinator that looks), leaves less noise than charged. With
           secure_aggregation.corrupt = f, up to ceil(f n_max) of the devices asked are assumed to
           do so, and the round is calibrated for the k = n_min - ceil(f n_max) others
           (`honest_inputs`; Kairouz et al. 2021, Sec. 5, count only honest clients' noise). f = 0,
           the default, trusts every device to add its share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.secagg import ddg

from .round import split_noise

WRAP_LOG2 = -40  # P(the noised sum wraps around the field), at most 2^-40 per round
_LN2 = math.log(2)


class FieldTooSmall(ConfigError, ValueError):
    """The configured field cannot carry a round's noised sum: a setting to change, named, so the
    service stops with one line (exit 2, which its unit does not restart) instead of a traceback."""


@dataclass(frozen=True)
class DdgParams:
    gamma: float  # the integer grid's step, real units
    sigma: float  # each device's discrete Gaussian std, integer units
    field_bits: int  # m: bits per coordinate on the wire
    rounded_bound: float  # Delta_2, integer units
    tau: float
    noise_multiplier: float  # z_eff >= the z charged (module docstring), the count coordinate included
    wrap_log2: float  # log2 of the bound on P(wrap) in one round
    count_scale: int = 0  # kappa: adaptive clipping's count coordinate, field units per device; 0 = none


def tau(sigma: float, inputs: int) -> float:
    """10 sum_{j=1}^{n-1} exp(-2 pi^2 sigma^2 j / (j + 1)) (Kairouz et al. 2021, Thm. 2)."""
    return 10 * math.fsum(math.exp(-2 * math.pi ** 2 * sigma ** 2 * j / (j + 1)) for j in range(1, inputs))


def effective_noise_multiplier(sigma: float, inputs: int, rounded: float, dimension: int,
                               count_scale: int = 0) -> float:
    """z_eff = (2 rho)^-1/2 for the sum of `inputs` devices' noise (module docstring); with a
    count coordinate (count_scale > 0, one more of the `dimension`) its kappa / 2 joins the L2 bound."""
    rho = (rounded ** 2 + (count_scale / 2) ** 2) / (2 * inputs * sigma ** 2) + tau(sigma, inputs) * dimension
    return (2 * rho) ** -0.5


def honest_inputs(min_inputs: int, asked: int, corrupt: float) -> int:
    """The noised inputs a round's charge may count on (module docstring, colluders): the fewest
    masked inputs it commits with, less the ceil(corrupt * asked) that may add no noise.
    ValueError when none are left."""
    colluders = math.ceil(round(corrupt * asked, 9))  # 0.07 * 100 is 7.000000000000001 in floats
    if min_inputs - colluders < 1:
        raise ValueError(f"{colluders} of {asked} devices asked may collude (secure_aggregation.corrupt = "
                         f"{corrupt:g}), as many as the {min_inputs} inputs a round commits with: no noise "
                         "is left to count on")
    return min_inputs - colluders


def sigma_for(z: float, inputs: int, rounded: float, dimension: int) -> float:
    """The smallest sigma (to 1e-9 relative) with effective_noise_multiplier >= z."""
    hi = z * rounded / math.sqrt(inputs) * 1.01 + 1.0
    while effective_noise_multiplier(hi, inputs, rounded, dimension) < z:
        hi *= 2
    lo = 0.0
    while hi - lo > 1e-9 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if mid > 0 and effective_noise_multiplier(mid, inputs, rounded, dimension) >= z \
            else (mid, hi)
    return hi


def wrap_log2(gamma: float, sigma: float, clip_range: float, dimension: int, max_inputs: int,
              field_bits: int, count_scale: int = 0) -> float:
    """log2 of the union bound on P(some coordinate of the noised sum leaves the signed field)."""
    headroom = (1 << (field_bits - 1)) - 1 - max_inputs * max(clip_range / gamma + 1, count_scale / 2)
    if headroom <= 0:
        return 0.0
    return min(0.0, math.log2(2 * dimension) - headroom ** 2 / (2 * max_inputs * sigma ** 2) / _LN2)


def params_for(z: float, clip_norm: float, clip_range: float, dimension: int, min_inputs: int, max_inputs: int,
               field_bits: int, beta: float = ddg.DEFAULT_BETA, count_stddev: float = 0.0) -> DdgParams:
    """The round's gamma and sigma (module docstring), and with count_stddev > 0 (sigma_b,
    adaptive clipping) the count coordinate's kappa; ValueError when m bits cannot hold it."""
    if not (z > 0 and clip_norm > 0 and clip_range > 0 and dimension >= 1 and 1 <= min_inputs <= max_inputs):
        raise ValueError("need z, S, c > 0, d >= 1 and 1 <= n_min <= n_max")
    z_update = split_noise(z, count_stddev) if count_stddev else z
    sent = dimension + (1 if count_stddev else 0)  # tau counts every coordinate that carries noise

    def at(gamma: float) -> DdgParams:
        rounded = ddg.rounded_bound(clip_norm / gamma, dimension, beta)
        sigma = sigma_for(z_update, min_inputs, rounded, sent)
        # 0 on a grid too coarse for the count (kappa < 2): only the grid chosen is checked, below
        kappa = 2 * math.floor(sigma * math.sqrt(min_inputs) / (2 * count_stddev)) if count_stddev else 0
        return DdgParams(gamma, sigma, field_bits, rounded, tau(sigma, min_inputs),
                         effective_noise_multiplier(sigma, min_inputs, rounded, sent, kappa),
                         wrap_log2(gamma, sigma, clip_range, sent, max_inputs, field_bits, kappa), kappa)

    lo, hi = math.log(clip_norm) - 60, math.log(clip_norm) + 60  # ln gamma: fine grid .. coarse grid
    if at(math.exp(hi)).wrap_log2 > WRAP_LOG2:
        raise FieldTooSmall(f"secure_aggregation.bits = {field_bits}: the field cannot hold the noised sum of "
                            f"{max_inputs} inputs (noise multiplier {z:.3g}) with P(wrap) <= 2^{WRAP_LOG2}; raise "
                            "bits (16 holds the README's settings) or lower clients_per_round")
    for _ in range(64):  # P(wrap) falls as gamma grows: the finest grid that fits
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if at(math.exp(mid)).wrap_log2 <= WRAP_LOG2 else (mid, hi)
    chosen = at(math.exp(hi))
    if count_stddev and chosen.count_scale < 2:  # the count's noise alone would exceed sigma_b's share
        raise FieldTooSmall(f"the count's noise sigma_b = {count_stddev:g} is too large for the grid "
                         f"(sigma sqrt(n_min) = {chosen.sigma * math.sqrt(min_inputs):.3g}); lower clip_count_stddev")
    return chosen
