"""Robust aggregation: pure numpy rules over one round's flattened deltas.

Every rule takes a (k, d) matrix (one row per accepted update, float64 math) and returns the
aggregate as a (d,) float64 vector; randomness comes from an injected np.random.Generator.

    rule                      module         memory            source
    coordinate_median         coordinate     O(k x model)      Yin et al. 2018
    trimmed_mean(beta)        coordinate     O(k x model)      Yin et al. 2018
    multi_krum(f, m)          krum           O(k x model + k^2) Blanchard et al. 2017
    centered_clipping(tau, L) clipping       O(k x model)      Karimireddy, He, Jaggi 2021
    bucketing(s, rule)        bucketing      O(k x model)      Karimireddy, He, Jaggi 2022
    ClippedMean + NormHistory norm_bound     O(model)          the default defence
    gated_keep(gap, share)    sign_split     O(k x model)      Xu et al. 2022, gated (opt-in, norm_bound)

The keep-all rules need the whole round in memory; the norm bound streams. Errors: errors.py.
"""

from .bucketing import bucket_means, bucketing
from .clipping import centered_clipping, clip_scale
from .coordinate import coordinate_median, trimmed_mean
from .errors import BadRobustParameter, RobustError, TooManyByzantine
from .flat import flatten, unflatten
from .krum import krum_scores, multi_krum, multi_krum_select
from .norm_bound import ClippedMean, NormBoundConfig, NormHistory

__all__ = [
    "BadRobustParameter",
    "ClippedMean",
    "NormBoundConfig",
    "NormHistory",
    "RobustError",
    "TooManyByzantine",
    "bucket_means",
    "bucketing",
    "centered_clipping",
    "clip_scale",
    "coordinate_median",
    "flatten",
    "krum_scores",
    "multi_krum",
    "multi_krum_select",
    "trimmed_mean",
    "unflatten",
]
