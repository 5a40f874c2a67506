"""[coordinator.secure_aggregation]: on/off, the graph's k and t, the shared encoding.

With secure aggregation on, the coordinator sees only the cohort's sum, so everything that
needs one device's update is refused at load time, each with a named error
(SecureAggregationConflict.reason): robust aggregators and norm_bound (they rank or clip
individual updates), the per-update norm_bound check, SCAFFOLD (per-device control variates),
example weighting (a device's weight would have to be applied before masking, and its claimed
count is unchecked: SecAgg sums with equal weights), model parts (secure rounds
carry their params inline), and a quorum under 2 (the sum of one update is that update).
The device's clip to the announced range is then the only norm defence. A file that leaves
out aggregator and weighting gets "mean" and "equal" instead of the defaults these refuse
(config.IMPLIED); only a value it writes is refused.

With directory_file (the fleet's identity directory) the coordinator refuses a key
advertisement its directory does not vouch for (round_state.accept), and leaves a device the
directory lacks out of selection (shell.selectable). The leader's service reads it before
anything else (service.run_service: a standby's too, not at its takeover) and its shell takes
that map (identities_of; only a shell built outside run_service, as in tests, reads the file);
a worker, `fedge coordinator forget-devices` and `fedge simulate` never read it. With
enabled = false it is not read. SIGHUP reads it again with the same checks (reload.py: a file
refused then keeps the map in use).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from fedge.edge_runtime.kernel.errors import ConfigError, NamedConfigError
from fedge.edge_runtime.kernel.secagg.graph import choose_parameters, threshold_for
from fedge.edge_runtime.kernel.secagg.quantize import field_bits

from ..limits import MAX_FLEET, MAX_SECURITY_BITS

log = logging.getLogger("fedge.coordinator")

# Why secure aggregation needs aggregator = "mean" and weighting = "equal": its refusals say it,
# and so does the line the service logs when it chose them for a file (config.IMPLIED).
WHY_MEAN = "norm_bound and the robust rules need individual updates; the coordinator sees only the masked sum"
WHY_EQUAL = "secure aggregation sums with equal weights"
WHY_DISTRIBUTED = ("central DP would noise a sum the coordinator has already seen without noise; under "
                   "mechanism = 'distributed' the devices add the noise before masking")


class SecureAggregationConflict(NamedConfigError):
    """A setting that needs individual updates, with secure aggregation on."""


class IdentityDirectoryRefused(NamedConfigError):
    """directory_file cannot be read as the fleet's identity directory (at the leader's start; at a
    SIGHUP reload it is logged and counted, and the old map stays: reload.py)."""


KEY = "coordinator.secure_aggregation.directory_file"  # read at the service's start, not with the file


@dataclass(frozen=True)
class SecAggConfig:
    enabled: bool = False
    # k and t of the neighbour graph; 0 = chosen for the cohort by graph.choose_parameters from
    # the dropout rate, the colluding-device rate and the security parameters below.
    neighbours: int = 0
    threshold: int = 0
    dropout: float = 0.3  # dropout rate the round must survive with probability 1 - 2^-eta
    corrupt: float = 0.0  # fraction of devices assumed to collude with the coordinator
    sigma: int = 40  # statistical security parameter
    eta: int = 20  # correctness parameter
    bits: int = 16  # b: quantization bits per coordinate (8 and 16 are the tested widths)
    # c: the shared L-inf clip after the rotation. 0 = 4 * clip_norm / sqrt(d): a rotated vector
    # of L2 norm <= clip_norm has coordinates of about clip_norm / sqrt(d), so 4 of those clips
    # almost nothing (compression.clip_norm must then be > 0).
    clip_range: float = 0.0
    stage_deadline_s: float = 60.0  # each stage after the first (the first trains: round_deadline_s)
    # Per-stage deadlines, seconds from the stage's start; 0 = stage_deadline_s.
    share_deadline_s: float = 0.0
    mask_deadline_s: float = 0.0
    unmask_deadline_s: float = 0.0
    # Per-stage thresholds: the replies a stage needs by its deadline, else the round is abandoned
    # (nothing applied; the next round runs under a new id). 0 = derived (stages.secagg_limits):
    # share and mask need the round's quorum (min_reports; the mask stage's replies are the inputs
    # in the sum), unmask needs t responders (no secret comes back from fewer than t shares; the
    # graph's t, known once the cohort is). Set, they are floors: unmask never takes fewer than t.
    share_min: int = 0
    mask_min: int = 0
    unmask_min: int = 0
    # Sparsification under SecAgg: every device sends the same random coordinates, drawn from the
    # round's seed (per-device top-k would leak: a coordinate one device alone sent is in the
    # clear in the sum); the rest stays on the device as error feedback. 1.0 = dense.
    keep_fraction: float = 1.0
    # The fleet's directory of identity public keys (JSON, device id -> hex: the file `fedge
    # provision identity` writes, the one every device's [secagg] directory_file names). Set, an
    # advertisement whose signature it does not verify is refused (round_state.accept): that
    # device sits the round out, where relayed it made every neighbour that checks signatures
    # decline the round; a device it lacks is not selected (shell.selectable). Read at the leader's
    # start and at each SIGHUP (reload.py); a relative path is the working folder's. "" = advertisements
    # are relayed unchecked.
    directory_file: str = ""

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 24:
            raise ConfigError("secure_aggregation.bits must be in [2, 24] (8 and 16 are the usual)")
        for name in ("neighbours", "threshold"):
            if not 0 <= getattr(self, name) <= MAX_FLEET:
                raise ConfigError(f"secure_aggregation.{name} must be in [0, {MAX_FLEET:,}] (0 = chosen)")
        for name in ("sigma", "eta"):
            if not 1 <= getattr(self, name) <= MAX_SECURITY_BITS:
                raise ConfigError(f"secure_aggregation.{name} must be in [1, {MAX_SECURITY_BITS}] bits "
                                  f"(failure probabilities 2^-sigma and 2^-eta; 40 and 20 by default)")
        if self.neighbours in (1, 2, 3):
            raise ConfigError("secure_aggregation.neighbours must be 0 (chosen) or >= 4: a sparse graph's packed "
                              "shares need t = k/2 + 2 of the k neighbours")
        if self.neighbours and self.threshold and 2 * self.threshold <= self.neighbours:
            raise ConfigError("secure_aggregation.threshold must exceed neighbours / 2: with 2t <= k the "
                              "coordinator could collect both a device's self-mask and mask-key shares (a "
                              "sparse graph's packed shares need one more, and get it: graph_for)")
        for name in ("dropout", "corrupt"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"secure_aggregation.{name} must be in [0, 1)")
        if self.dropout + self.corrupt >= 1:
            raise ConfigError("secure_aggregation.dropout + secure_aggregation.corrupt must be < 1")
        if not (self.clip_range >= 0 and math.isfinite(self.clip_range)):
            raise ConfigError("secure_aggregation.clip_range must be >= 0 (0 = from compression.clip_norm)")
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError("secure_aggregation.keep_fraction must be in (0, 1] (1 = dense)")
        if not self.stage_deadline_s > 0:
            raise ConfigError("secure_aggregation.stage_deadline_s must be > 0")
        for name in ("share", "mask", "unmask"):
            deadline, minimum = getattr(self, f"{name}_deadline_s"), getattr(self, f"{name}_min")
            if not (deadline >= 0 and math.isfinite(deadline)):
                raise ConfigError(f"secure_aggregation.{name}_deadline_s must be >= 0 (0 = stage_deadline_s)")
            if not 0 <= minimum <= MAX_FLEET:
                raise ConfigError(f"secure_aggregation.{name}_min must be in [0, {MAX_FLEET:,}] (0 = derived)")
        if self.mask_min == 1:
            raise ConfigError("secure_aggregation.mask_min must be 0 (the round's quorum) or >= 2: "
                              "the sum of one masked input is that device's update")

    def deadline_of(self, stage: str) -> float:
        """Seconds the share, mask or unmask stage waits for its replies."""
        return getattr(self, f"{stage}_deadline_s") or self.stage_deadline_s

    def graph_for(self, cohort: int) -> tuple[int, int]:
        """(k, t) for a cohort of this size: the configured ones, capped at a complete graph."""
        chosen = choose_parameters(cohort, self.dropout, self.corrupt, self.sigma, self.eta)
        k = min(self.neighbours or chosen.neighbours, cohort - 1)
        if self.neighbours and k % 2 and k < cohort - 1:
            k += 1  # the circulant graph needs an even degree
        # t: rule 2 for this k with the colluders assumed (with corrupt = 0 that is
        # graph.threshold_floor, what a device accepts), or the configured t if higher. A configured
        # k without a t gets rule 2 for that k, not the t chosen for another graph. Above k (more
        # colluders than the graph can hide a device from) every device fails to share and the
        # round is abandoned: no round runs below the guarantee.
        # (The t chosen with k is rule 2 for it, or less where a tiny complete graph clamps it to k.)
        rule_2 = threshold_for(k, cohort, self.corrupt, self.sigma)
        return k, max(min(self.threshold, k), rule_2) if self.threshold else rule_2

    def clip_for(self, clip_norm: float, dimension: int) -> float:
        return self.clip_range or 4.0 * clip_norm / math.sqrt(dimension)


# directory_file -> the map `fedge coordinator serve` read at its start (preload_identities): a
# standby builds its coordinator only when it wins the lease, maybe days later, and must not read
# the file again then (a file broken meanwhile would stop the new leader just after it won)
_PRELOADED: dict[str, dict[str, bytes]] = {}


def preload_identities(sa: SecAggConfig) -> None:
    """Read the directory now (service.run_service, before the lease); identities_of returns it later."""
    identities = identities_of(sa)
    if identities is not None:
        _PRELOADED[sa.directory_file] = identities
        # the start once said nothing of the directory: an operator could not tell it was read, nor how big
        log.info("coordinator: identity directory %s: %d identities", sa.directory_file, len(identities))


def identities_of(sa: SecAggConfig) -> dict[str, bytes] | None:
    """The directory a secure coordinator checks advertisements against; None when it checks none."""
    if not sa.enabled:
        return None
    preloaded = _PRELOADED.get(sa.directory_file)
    return preloaded if preloaded is not None else load_identities(sa.directory_file)


def load_identities(directory_file: str) -> dict[str, bytes] | None:
    """device id -> Ed25519 public key from directory_file (read at the leader's start:
    preload_identities, and at each SIGHUP: reload.py); None without one. An unreadable, malformed
    or empty file is refused by name: an empty one would refuse every advertisement, and no secure
    round could run."""
    if not directory_file:
        return None
    # here, not at the top: cryptography is the [coordinator] extra's, and the CLI's parser imports
    # this module on a device install too (tests/tools/test_cli_errors.py)
    from fedge.edge_runtime.kernel.secagg.identity_files import load_directory

    try:
        directory = load_directory(directory_file)
    except ConfigError as exc:
        raise IdentityDirectoryRefused("secagg_directory_file", f"{KEY}: {exc}") from None
    if not directory:
        raise IdentityDirectoryRefused("secagg_directory_file", f"{KEY}: {directory_file} names no device, so every "
                                       "key advertisement would be refused; add the fleet's identities (fedge "
                                       "provision identity --directory)")
    return directory


def check_compatible(cfg) -> None:
    """Raise SecureAggregationConflict for a CoordinatorConfig that needs individual updates."""
    sa = cfg.secure_aggregation
    if not sa.enabled:
        return
    conflicts = [
        (cfg.aggregator != "mean", "secagg_robust_aggregator",
         f"aggregator {cfg.aggregator!r}: {WHY_MEAN}; secure aggregation needs aggregator = 'mean'"),
        (cfg.norm_bound > 0, "secagg_norm_bound", "norm_bound checks each update's norm; set it to 0 (the device's "
                                                  "clip to the announced range is the norm defence)"),
        (cfg.strategy == "scaffold", "secagg_scaffold", "scaffold needs each device's control variate"),
        (cfg.weighting != "equal", "secagg_weighting", f"{WHY_EQUAL}: set weighting = 'equal'"),
        (cfg.privacy.enabled and cfg.privacy.mechanism != "distributed", "secagg_privacy",
         f"{WHY_DISTRIBUTED}: set privacy.mechanism = 'distributed'"),
        (cfg.model_part_bytes > 0, "secagg_model_parts", "secure rounds carry their params inline: "
                                                         "set model_part_bytes = 0"),
        (cfg.quorum < 2, "secagg_quorum", "a sum of one device's update is that update: min_reports (or "
                                           "clients_per_round) must allow at least 2"),
        (max(sa.share_min, sa.mask_min, sa.unmask_min) > cfg.clients_per_round, "secagg_stage_min",
         "a stage minimum (share_min, mask_min, unmask_min) above clients_per_round: no round could pass it"),
        # the devices quantize into the shared field (bits) and send every coordinate, so these
        # would not apply; the default 8 bits and error feedback are replaced without a word
        (cfg.compression.topk_fraction < 1 or cfg.compression.quant_bits not in (8, 32), "secagg_compression",
         "devices send every coordinate quantized into the shared field (secure_aggregation.bits): "
         "leave compression.topk_fraction = 1 and quant_bits at 8 or 32"),
        (sa.clip_range == 0 and cfg.compression.clip_norm <= 0, "secagg_no_clip_range",
         "secure aggregation needs a clip range: set secure_aggregation.clip_range or compression.clip_norm"),
    ]
    asked = math.ceil(cfg.clients_per_round * cfg.over_selection)
    if not (cfg.privacy.enabled and cfg.privacy.mechanism == "distributed"):  # that field is `bits` (private.py)
        # m = b + ceil(log2 n) must fit the 32-bit mask words: past 32, masking.sum_mod's
        # words wrap mod 2^32 and the unmasked sum comes out wrong without a word (b = 24,
        # 300 devices: 7.38e8 for 5.03e9)
        m = field_bits(sa.bits, max(asked, cfg.clients_per_round, 1))
        conflicts.append((m > 32, "secagg_field_bits",
                          f"bits = {sa.bits} with up to {asked} devices a round (clients_per_round x over_selection) "
                          f"needs a {m}-bit field for the sum, over the 32 bits of the mask words: lower bits or "
                          "ask fewer devices a round"))
    if sa.corrupt > 0 and asked >= 2:  # the largest cohort a round can have; a smaller one fares no better
        k, t = sa.graph_for(asked)
        conflicts.append((t > k, "secagg_too_many_corrupt",
                          f"with corrupt = {sa.corrupt:g} a cohort of {asked} (clients_per_round x over_selection) "
                          f"needs t = {t} of its k = {k} neighbours, more than it has, so no round could run: "
                          "ask more devices a round or lower corrupt"))
    for bad, reason, message in conflicts:
        if bad:
            raise SecureAggregationConflict(reason, f"secure_aggregation ({reason}): {message}")
