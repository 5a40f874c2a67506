"""The `[coordinator.privacy]` table, validated on construction, and what privacy needs of the
rest of the CoordinatorConfig (check_coordinator). Imports no dp-accounting: the config loads
wherever the coordinator's config does.

Why the plain clipped mean and no robust rule: the Gaussian mechanism's guarantee rests on the
sensitivity of the sum, S per device whatever the others sent. A robust rule's output depends
on the whole cohort at once (a median, Krum's pick, norm_bound's 2x-median clip), so one
device can move it by more than S / W and the noise would no longer cover it; weights by
claimed examples do the same (a device claiming more moves the mean more). So privacy needs
aggregator = "mean" and weighting = "equal", and every device counts once. Clipping already
bounds what one device can do to the model, which is what the robust rules are for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.edge_runtime.kernel.errors import ConfigError

SAMPLINGS = ("fixed", "poisson")
ACCOUNTANTS = ("rdp", "pld")
ON_EXHAUSTED = ("stop", "wait")
MECHANISMS = ("central", "distributed")
# Calibrating z with accountant = "pld" (dp/calibrate.py says why and what was measured): PLD
# composes the rounds in one discretised distribution, whose time and memory grow with them,
# and it leaves 1e-15 of each round's tail unbounded, so a smaller delta is never shown.
PLD_MAX_ROUNDS = 1_000
PLD_MIN_DELTA = 1e-14
# Calibrating z for `rounds` rounds with either accountant (RDP's search, 10,000 devices, 100 a
# round, ε 8, δ 1e-6, on 2 shared cores): fixed-size 1e3 rounds 9.2 s, 1e6 10.6 s, 1e7 13.4 s,
# 2**62 43 s (53 s seen on a busier machine); Poisson 1.9, 0.9, 1.1 and 4.4 s. Past 1e6 the
# search grows while a budget meant to last that long is a typo or a wish.
MAX_CALIBRATED_ROUNDS = 1_000_000
# Why privacy needs aggregator = "mean" and weighting = "equal" (module docstring): its refusals
# say it, and so does the line the service logs when it chose them for a file (config.IMPLIED).
WHY_MEAN = ("DP-FedAvg replaces it with the clipped, noised mean; a robust rule's sensitivity is not S "
            "(norm_bound's clip at 2x the median norm depends on the whole cohort)")
WHY_EQUAL = ("a device weighted by its claimed examples could move the mean by more than S / W, beyond what the "
             "noise covers")


@dataclass(frozen=True)
class PrivacyConfig:
    """Central DP-FedAvg and its budget. Off unless `enabled`.

    delta defaults to 1e-6: it must be well below 1 / population for the guarantee to mean
    anything, and 1e-6 covers fleets up to about 10^5 devices; set it lower for larger ones.
    sampling says how the coordinator draws a round's devices, and so how the accountant
    models it. "fixed": a fixed-size cohort without replacement from the eligible devices,
    over-selection included (the devices asked are the ones whose data may be touched), charged
    under replace-one, where one device moves the clipped sum by up to 2S. "poisson": each
    eligible device independently with probability q = asked / eligible, charged under
    add-or-remove-one (sensitivity S): about half the noise for the same ε, as in McMahan et al.
    2018, for a cohort whose size varies: every device drawn counts, and the round is charged
    however it ends (sync rounds, central mechanism, no shards: check_coordinator).
    """

    enabled: bool = False
    # "central": the coordinator noises the sum of the updates it sees (mechanism.py); "distributed":
    # each device adds its share of discrete Gaussian noise before secure aggregation masks it
    # (distributed.py), so the coordinator never sees a noiseless sum; needs secure_aggregation (a
    # file with both on that leaves this out gets "distributed": CoordinatorConfig.from_toml).
    mechanism: str = "central"
    target_epsilon: float = 8.0
    delta: float = 1e-6
    noise_multiplier: float = 0.0  # z; 0 = calibrate it from target_epsilon and `rounds`
    rounds: int = 0  # with noise_multiplier = 0: the rounds the budget must last
    clip_norm: float = 1.0  # S: the L2 bound on one device's delta (device clips, coordinator enforces)
    sampling: str = "fixed"
    accountant: str = "rdp"  # the check before each round; reports may use pld as well
    on_exhausted: str = "stop"  # "stop": end the job with a clear status; "wait": stay up, run no round
    # Adaptive clipping (Andrew et al. 2021), on when target_quantile > 0: S starts at clip_norm and
    # follows this quantile of the devices' update norms, S <- S exp(-clip_lr (b - target_quantile)),
    # b the noised fraction of devices not clipped; the noise on that count (clip_count_stddev;
    # 0 = max(W / 20, z), the paper's W / 20) is accounted: the deltas get z_delta with
    # z_delta^-2 + (2 clip_count_stddev)^-2 = z^-2, so the round still costs a Gaussian of multiplier z.
    # Under the distributed mechanism the devices noise the count inside the secure sum (dp/distributed.py).
    target_quantile: float = 0.0
    clip_lr: float = 0.2
    clip_count_stddev: float = 0.0
    # The devices' mean training loss (round records, log lines, fedge_round_train_loss) and
    # federated evaluation (EvalReports from the devices' own data) are neither noised nor
    # charged: with privacy on they are withheld unless this is true, which releases them
    # outside the (ε, δ) guarantee (the README's section User-level differential privacy says so).
    release_unnoised_metrics: bool = False

    @property
    def withholds_metrics(self) -> bool:
        """True when the loss and evaluation are withheld (above)."""
        return self.enabled and not self.release_unnoised_metrics

    def __post_init__(self) -> None:
        if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ConfigError("privacy.target_epsilon must be a finite number > 0")
        if not 0 < self.delta < 1:
            raise ConfigError("privacy.delta must be in (0, 1); 1e-6 is the default")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError("privacy.noise_multiplier must be >= 0 (0 = calibrate from target_epsilon and rounds)")
        if self.rounds < 0:
            raise ConfigError("privacy.rounds must be >= 0")
        if self.enabled and self.noise_multiplier == 0 and self.rounds == 0:
            raise ConfigError("privacy: set noise_multiplier, or rounds so fedge can calibrate it for target_epsilon")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ConfigError("privacy.clip_norm must be a finite number > 0")
        if not 0 <= self.target_quantile < 1:
            raise ConfigError("privacy.target_quantile must be in [0, 1); 0 = a fixed clip_norm, 0.5 = the median")
        if not (self.clip_lr > 0 and math.isfinite(self.clip_lr)):
            raise ConfigError("privacy.clip_lr must be a finite number > 0 (0.2 in Andrew et al.)")
        if not (self.clip_count_stddev >= 0 and math.isfinite(self.clip_count_stddev)):
            raise ConfigError("privacy.clip_count_stddev must be >= 0 (0 = max(expected cohort / 20, z))")
        for name, allowed in (("sampling", SAMPLINGS), ("accountant", ACCOUNTANTS), ("on_exhausted", ON_EXHAUSTED),
                              ("mechanism", MECHANISMS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"privacy.{name} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.accountant == "pld" and self.sampling == "fixed":
            raise ConfigError("privacy.accountant = 'pld' needs sampling = 'poisson': dp-accounting 0.6's PLD "
                              "accountant has no fixed-size (without replacement) sampling event; use accountant = "
                              "'rdp' with sampling = 'fixed'")
        if self.accountant == "pld" and self.enabled:
            check_pld(self.rounds if self.noise_multiplier == 0 else 0, self.delta)
        if self.enabled and self.noise_multiplier == 0:
            check_rounds(self.rounds)
        if self.target_quantile and self.noise_multiplier:
            check_count_noise(self.clip_count_stddev, self.noise_multiplier, "noise_multiplier")


def check_rounds(rounds: int) -> None:
    """ConfigError unless z can be calibrated for `rounds` rounds in bounded time (MAX_CALIBRATED_ROUNDS)."""
    if rounds > MAX_CALIBRATED_ROUNDS:
        raise ConfigError(f"privacy: rounds = {rounds} to calibrate noise_multiplier for is over "
                          f"{MAX_CALIBRATED_ROUNDS:,}, the most fedge calibrates (the search's time grows with the "
                          "rounds); plan fewer rounds, or set noise_multiplier and let the budget refuse the round "
                          "that would spend more than target_epsilon")


def check_pld(rounds: int, delta: float) -> None:
    """ConfigError unless PLD can calibrate `rounds` rounds (0: none calibrated) and show `delta`."""
    if rounds > PLD_MAX_ROUNDS:
        raise ConfigError(f"privacy: rounds = {rounds} to calibrate with accountant = 'pld' is over {PLD_MAX_ROUNDS}: "
                          "PLD composes the rounds in one discretised distribution whose time and memory grow with "
                          "them (1e4 rounds: 23 s and 2.7 GB an evaluation, and the search runs a dozen); plan fewer "
                          "rounds, set noise_multiplier (a fleet whose ledger holds charges already: the z they "
                          "were charged at, which it reuses anyway), or use accountant = 'rdp'")
    if delta < PLD_MIN_DELTA:
        raise ConfigError(f"privacy.delta {delta:g} is below {PLD_MIN_DELTA:g}, which dp-accounting's PLD accountant "
                          "cannot show (it leaves 1e-15 of each round's tail unbounded: its ε is infinite there); "
                          "raise delta, or use accountant = 'rdp'")


def check_count_noise(count_stddev: float, z: float, what: str = "z") -> None:
    """Adaptive clipping splits z into z_delta^-2 + (2 count_stddev)^-2 = z^-2 (round.split_noise),
    which needs 2 count_stddev > z; 0 (the default, max(W / 20, z)) always does."""
    if count_stddev and not 2 * count_stddev > z:
        raise ConfigError(f"privacy.clip_count_stddev {count_stddev:g} must exceed {what} / 2 = {z / 2:g}: adaptive "
                          f"clipping takes the count's noise out of z (z_delta^-2 + (2 clip_count_stddev)^-2 = z^-2); "
                          "raise it, or leave it 0 for max(expected cohort / 20, z)")


def check_coordinator(cfg) -> None:
    """Refuse, by name, what DP-FedAvg cannot account for (module docstring); `cfg` is a CoordinatorConfig."""
    p = cfg.privacy
    if not p.enabled:
        return
    # the key first, so the error is located on it: a file that leaves it out gets the value (config.IMPLIED)
    if cfg.aggregator != "mean":
        raise ConfigError(f"aggregator {cfg.aggregator!r} with privacy on: privacy needs aggregator = 'mean' (a file "
                          f"that leaves the key out gets it): {WHY_MEAN} (coordinator/dp/config.py)")
    if cfg.weighting != "equal":
        raise ConfigError(f"weighting {cfg.weighting!r} with privacy on: privacy needs weighting = 'equal' (a file "
                          f"that leaves the key out gets it): {WHY_EQUAL}")
    if cfg.strategy == "scaffold":
        raise ConfigError("privacy cannot run strategy 'scaffold': its control variates leave the device "
                          "unclipped and unnoised")
    if cfg.norm_bound:
        raise ConfigError("privacy clips each update to privacy.clip_norm; norm_bound (which rejects) must be 0")
    if p.sampling == "poisson" and p.mechanism == "distributed":
        raise ConfigError("privacy.sampling = 'poisson' with mechanism = 'distributed' is not built: a device "
                          "removed from the draw takes its own noise share with it, and the distributed discrete "
                          "Gaussian's bound is for one vector changed among a fixed number of noised inputs; use "
                          "sampling = 'fixed', or the central mechanism (without secure aggregation)")
    if p.sampling == "poisson" and cfg.shards:
        raise ConfigError("privacy.sampling = 'poisson' is not built for sharded rounds (shards > 0): one device's "
                          "presence changes the shard groups' sizes and merges, which the charge does not cover")
    if p.sampling == "poisson" and getattr(cfg, "mode", "sync") != "sync":
        raise ConfigError("privacy.sampling = 'poisson' needs mode = 'sync': an async buffer always holds K updates, "
                          "so one device's absence is another's presence (fixed-size, replace-one accounting)")
    if p.mechanism == "distributed" and not cfg.secure_aggregation.enabled:
        raise ConfigError("privacy.mechanism = 'distributed' needs secure_aggregation.enabled = true: the "
                          "devices' noise shares add up to the round's noise only inside the secure sum")
    if p.mechanism == "distributed" and cfg.secure_aggregation.corrupt:
        _check_colluders(cfg)
    if p.mechanism == "distributed" and p.target_quantile and cfg.shards:
        raise ConfigError("privacy.target_quantile (adaptive clipping) under the distributed mechanism is not built "
                          "for sharded rounds (shards > 0): each shard group's count would need its own noise; set a "
                          "fixed clip_norm")
    if cfg.compression.clip_norm not in (0.0, p.clip_norm):
        raise ConfigError(f"compression.clip_norm {cfg.compression.clip_norm:g} differs from privacy.clip_norm "
                          f"{p.clip_norm:g}: with privacy on, leave it 0 and the tasks carry privacy.clip_norm")


def _check_colluders(cfg) -> None:
    """secure_aggregation.corrupt > 0 under distributed DP: the noise is calibrated for the inputs
    that are not from colluders (dp/distributed.py, honest_inputs). A round's fewest masked
    inputs are at least the configured quorums' lowest and it asks at most
    selection_size(clients_per_round) devices, so a config that leaves one input here leaves
    one in every round."""
    from ..sampling import selection_size
    from .distributed import honest_inputs  # not at import: the config loads without numpy's users

    sa = cfg.secure_aggregation
    if cfg.shards:
        raise ConfigError("secure_aggregation.corrupt > 0 under the distributed mechanism is not built for sharded "
                          "rounds (shards > 0): the colluders could all sit in one shard group, whose noise would "
                          "then be calibrated for fewer inputs than its quorum")
    fewest = min([cfg.quorum, *(m for m in (sa.share_min, sa.mask_min) if m)])
    try:
        honest_inputs(fewest, selection_size(cfg.clients_per_round, cfg.over_selection, 1 << 62),
                      sa.corrupt)
    except ValueError as exc:
        raise ConfigError(f"privacy: {exc}; raise min_reports (and share_min, mask_min) or lower "
                          "secure_aggregation.corrupt") from None
