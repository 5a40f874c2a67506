"""Standardization of a --data folder's features, and when a run applies it.

Every device standardizes its features with the same per-feature (mean, std): by default the
fleet's, pooled over every device's training split (`fleet`: each device's count, mean and sum
of squared deviations, merged exactly: what a statistics round adds up, and what `fedge data
combine-moments` computes from the devices' `fedge device moments` files), or each device's own
(`device`, --standardize-with device: no statistic of a device's data leaves it). A `fedge
simulate --data` run decides once, as the folder loads (resolve):

    --standardize      on
    --no-standardize   off
    neither (auto)     on when the pooled training features are far from standardized
                       (scale_finding: a per-feature |mean| or std above FAR_FROM_UNIT, or no
                       feature's std reaching BARELY_VARIES), off otherwise, and off when
                       --model is an import with pretrained weights (`pretrained`); 8-bit
                       intensities saved as another dtype than uint8, flagged or beside splits
                       saved as uint8, are read as x / 255 instead, as a device reads uint8
                       (tools/intensities.py)

Why the fleet's by default: a device's own statistics follow its label mix, so under label skew
a device holding one class maps that class to zero and the global model cannot tell the classes
apart. Measured (scikit-learn wine and breast cancer, 10 files, Dirichlet 0.1, 5 a round, 20
rounds, seed 0; data seeds 0 and 1): global accuracy 0.486 / 0.457 (wine) and 0.619 / 0.628
(breast cancer) with each device's own statistics, 0.971 / 0.943 and 0.973 / 0.965 with the fleet's,
personalized accuracy within 1.5 points either way (benchmarks/results/2026-12-07-fleet-standardize).
With privacy or secure aggregation on, the default is `device`: the pooled statistics would be
released outside the DP accountant and the masked sum (an explicit --standardize-with fleet there
is warned about).

Auto leaves unflagged data alone: standardizing features that are already on a unit scale costs
global accuracy where labels are skewed when each device uses its own statistics (a device holding
one class: 0.98 -> 0.62-0.78, benchmarks/results/2026-12-06-unseen-data/runs.json).
Shipped datasets (--dataset, scaled to [0, 1]) are never standardized unless asked.
Nor are the inputs of an imported model (an `onnx = ...` spec, e.g. `fedge pretrain`'s): its
frozen backbone was trained on its source's inputs, and a model that scales raw inputs itself
(digits saved as 0..16 into a Mul(1/16) in front of `fedge pretrain`'s graph) ended 5 rounds at
a global accuracy of 0.642 / 0.642 (seeds 0 / 1) with auto standardizing them, 0.944 / 0.951 as
saved.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.edge_runtime.kernel.features import combine_moments, feature_moments, feature_statistics, standardize
from fedge.tools.intensities import eight_bit, read_as_uint8, saves_uint8

log = logging.getLogger("fedge.datasets")

if TYPE_CHECKING:
    from fedge.tools.datasets import FederatedDataset

# Features beyond this scale (a per-feature mean or std, in the data's units) are "far from
# standardized": with the default learning rate such data diverged in every round. It was 10
# until a probe found digits halved (values 0..8, per-feature means up to 7) diverging unflagged;
# at 4 the check still leaves standardized data and [0, 1] pixels alone.
FAR_FROM_UNIT = 4.0
# ... and features that barely vary (the largest per-feature std below this) are as far from it the
# other way: the default model's hidden layers have no trainable bias before the head, so its
# logits move with the input's scale. Blobs scaled to a std of 1e-4 learnt nothing in 5 rounds
# (the constant guess, with no load warning), 0.03 reached 0.57 and 0.1 0.91 where unit scale
# reached 0.94 (a probe, 2026-12-06); [0, 1] pixels (std up to ~0.45) stay unflagged.
BARELY_VARIES = 0.05
# Whose statistics a standardizing run uses: the fleet's pooled ones, or each device's own.
STATISTICS = ("fleet", "device")


@dataclass(frozen=True)
class Standardizing:
    """What a --data run did to its features: `on` (every device standardized them), `using` (with
    the fleet's statistics or each its own: STATISTICS; each its own for a --standardize folder of
    two scales, resolve), `mode`
    ("auto", "on" or "off": what was asked), `finding` (scale_finding of the features as
    saved, when auto looked; None when they were not flagged or auto did not look),
    `pretrained` (the --model whose pretrained inputs made auto keep flagged features as saved)
    and `eight_bit` (the dtypes, e.g. "float32", of 8-bit intensities that auto read as x / 255,
    flagged or beside splits saved as uint8: `on` is then False, no device standardized; under
    --no-standardize, those it kept as saved, and under --standardize those beside uint8 splits)
    and `beside_uint8` (some split of the folder is saved as uint8 beside them: devices read it as
    x / 255 and the 8-bit splits as saved, 255 times its scale, unless auto divides them)."""

    on: bool
    mode: str
    finding: str | None = None
    pretrained: str = ""
    eight_bit: str = ""
    beside_uint8: bool = False
    using: str = "fleet"  # STATISTICS: the fleet's pooled (mean, std), or each device's own

    @property
    def why(self) -> str:
        """The decision in words (run.json's config.standardize_why)."""
        if self.mode != "auto":
            return "--standardize" if self.on else "--no-standardize"
        if self.kept_for_model:
            return f"auto: kept as saved for the pretrained --model {self.pretrained}, though {self.finding}"
        if self.eight_bit:
            return f"auto: 8-bit intensities saved as {self.eight_bit}, read as x / 255"
        return f"auto: {self.finding}" if self.on else "auto: the features are not far from standardized"

    @property
    def applied_with(self) -> str | None:
        """Whose statistics the devices standardized with (run.json's standardize_with), None when
        they did not standardize."""
        return self.using if self.on else None

    @property
    def kept_for_model(self) -> bool:
        """Auto found the features far from standardized and kept them for a pretrained model."""
        return self.mode == "auto" and not self.on and bool(self.pretrained) and self.finding is not None

    @property
    def divided_by_255(self) -> bool:
        """Auto read 8-bit intensities saved as another dtype as x / 255 (run.json's
        config.divided_by_255): real devices read such files as saved."""
        return self.mode == "auto" and bool(self.eight_bit)

    @property
    def warning(self) -> str | None:
        """The one load-time line when auto standardized, naming the finding and the opt-out, or
        read 8-bit intensities as x / 255, naming what real devices need to read them alike."""
        if self.divided_by_255:
            what = (f"{self.finding}, but they are 8-bit intensities (integers 0..255) saved as {self.eight_bit}"
                    if self.finding else f"some splits hold 8-bit intensities (integers 0..255) saved as "
                    f"{self.eight_bit} beside splits saved as uint8")
            return (f"{what}: "
                    f"each device reads them as x / 255, as it reads uint8 (auto; --standardize standardizes them "
                    f"on each device, --no-standardize keeps them as saved); real devices read {self.eight_bit} as "
                    f"saved, so save them as uint8 (which devices read as x / 255) or divide them by 255 before "
                    f"saving")
        if self.mode != "auto" or not self.on:
            return None
        if self.using == "fleet":
            return (f"{self.finding}. Every device standardizes them with the fleet's pooled training mean and std "
                    f"(auto; --no-standardize keeps them as saved, --standardize-with device uses each device's "
                    f"own); on real devices set [data] standardize = true and [data] statistics to the fleet's "
                    f"file (fedge data combine-moments) in every device's config to train as this run does")
        return (f"{self.finding}. Each device standardizes them with its own training split's mean and "
                f"std (auto; --no-standardize keeps them as saved); on real devices set [data] standardize = true "
                f"in every device's config to train as this run does")


def standardize_per_device(data: FederatedDataset) -> FederatedDataset:
    """Each device standardizes its own features with its own training split's per-feature mean
    and std (its test split with the same numbers) (--standardize-with device): no statistic of
    a device's data leaves it (the fleet's would need secure aggregation of the moments to be as
    private), a device can do the same to what it sees at inference, and a device-specific
    offset or scale (a sensor's calibration) is removed rather than learnt around. A feature
    constant on a device (std at most 4.8e-7 of its scale: four float32 ulps) is centred, not scaled. The formula is a
    real device's with `[data] standardize = true` (edge_runtime/kernel/features.py), bit for bit.
    DatasetError when a value, standardized, leaves float32's range (edge_runtime/kernel/features.standardize)."""
    return _standardized(data, lambda c: feature_statistics(c.x_train))  # the device's own formula


def standardize_with_fleet(data: FederatedDataset, held_out: int = 0) -> FederatedDataset:
    """Every device standardizes its features, both splits, with the fleet's statistics
    (fleet_statistics): one affine for the whole fleet, so a class means the same inputs on every
    device. The last `held_out` devices (--new-devices: they join after training) add nothing to
    the statistics and are standardized with them, as a device that joins a real fleet is given
    the fleet's file. DatasetError as standardize_per_device's."""
    check_held_out(held_out, len(data.clients))
    fleet = fleet_statistics(data.subset(0, len(data.clients) - held_out))
    return _standardized(data, lambda c: fleet)


def check_held_out(held_out: int, clients: int) -> None:
    """ConfigError unless some of `clients` are left to train after `held_out` (--new-devices)."""
    if not 0 <= held_out < clients:
        raise ConfigError(f"--new-devices {held_out}: the data has only {clients} clients; some must train")


def standardize_devices(data: FederatedDataset, using: str, held_out: int = 0) -> FederatedDataset:
    """standardize_with_fleet or standardize_per_device, by `using` (STATISTICS)."""
    if using not in STATISTICS:
        raise ValueError(f"standardize with {using!r}: one of {', '.join(STATISTICS)}")
    return standardize_with_fleet(data, held_out) if using == "fleet" else standardize_per_device(data)


def fleet_statistics(data: FederatedDataset) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64 of the per-example shape, over every device's training split pooled:
    each device's Moments (count, mean, sum of squared deviations) merged exactly, with
    feature_statistics's rule for a constant feature (std 1: centred only). The same functions
    as `fedge device moments` on each device and `fedge data combine-moments` on their files
    (edge_runtime/kernel/features.py), so a fleet deployed from a run applies these numbers."""
    clients = [c for c in data.clients if len(c.x_train)]
    return combine_moments((feature_moments(c.x_train) for c in clients), [f"device {c.client_id}" for c in clients])


def _standardized(data: FederatedDataset, statistics) -> FederatedDataset:
    """Each client's splits standardized with statistics(client)'s (mean, std)."""
    clients = []
    for c in data.clients:
        mean, std = statistics(c)
        try:
            x_train, x_test = (standardize(x, mean, std, f"device {c.client_id}: {xs} (standardized)")
                               for x, xs in ((c.x_train, "x_train"), (c.x_test, "x_test")))
        except DatasetError as exc:  # a test value far from a training split in which its feature barely varies
            raise DatasetError(f"{exc}; check that feature's values, or train on the features as saved "
                               f"(--no-standardize)") from None
        clients.append(replace(c, x_train=x_train, x_test=x_test))
    return replace(data, clients=tuple(clients))


def scale_finding(data: FederatedDataset) -> str | None:
    """The pooled training features' scale in words when it is far from standardized (either
    way), else None."""
    mean, std, top = pooled_scale(data)
    if max(mean, std) <= FAR_FROM_UNIT and std >= BARELY_VARIES:
        return None
    outcome = ("training on them as they are will likely diverge" if max(mean, std) > FAR_FROM_UNIT else
               "they barely vary, so a model trained on them as they are sees almost no signal and will likely "
               "learn little")
    return (f"features are far from standardized (per-feature |mean| up to {mean:.3g}, std up to {std:.3g}, "
            f"largest |value| {top:.3g}); {outcome}")


def pooled_scale(data: FederatedDataset) -> tuple[float, float, float]:
    """The pooled training features' largest per-feature |mean|, largest per-feature std and
    largest |value|, one device at a time (Chan, Golub and LeVeque's pairwise update of mean and
    sum of squared deviations). The pool concatenated in float64 was twice its size at the peak,
    and a run measures it three times: load_npz_dir of 40 files holding 251 MB of float32
    training features peaked at 1.33 GB of RSS, 0.37 GB this way (1.66 / 0.72 GB when auto
    standardizes them)."""
    n, mean, m2, top = 0, 0.0, 0.0, 0.0  # mean and m2 become per-feature arrays at the first device
    for c in data.clients:
        x = c.x_train.astype(np.float64)
        if not len(x):
            continue
        own, top = x.mean(axis=0), max(top, -float(x.min()), float(x.max()))
        delta, total = own - mean, n + len(x)
        mean = mean + delta * (len(x) / total)
        x -= own  # in place: one device's float64 copy is the peak
        m2 = m2 + np.square(x, out=x).sum(axis=0) + delta ** 2 * (n * len(x) / total)
        n = total
    if not n:
        raise ValueError("no training examples to measure")  # load_npz_dir refuses such a file first
    return float(np.abs(mean).max()), float(np.sqrt(m2 / n).max()), top


def resolve(data: FederatedDataset, standardize: bool | None, pretrained: str = "",
            saved: Mapping[str, Mapping[str, np.dtype]] | None = None, using: str = "fleet",
            held_out: int = 0) -> FederatedDataset:
    """`data` as its devices train on it, with `standardizing` saying what was done and why:
    standardize True (on), False (off) or None (auto: on when scale_finding flags the data,
    unless `pretrained` names an imported --model, whose inputs stay as its source saw them, or
    the features are 8-bit intensities saved as another dtype than uint8, flagged or beside splits
    saved as uint8, which are read as x / 255; beside uint8 splits, for a pretrained model too).
    `saved`: each device's saved dtypes of x_train and x_test (intensities.eight_bit); None: not
    known, and no data is taken for 8-bit intensities. `using`: whose statistics (STATISTICS);
    `held_out`: the last devices, which the fleet's statistics leave out (standardize_with_fleet).
    Under --standardize, 8-bit intensities saved as float beside uint8 splits are read as saved,
    on another scale than the uint8 ones (x / 255): pooled, the two scales would make one split's
    features nearly constant (digits x 255 / 16 over 4 files, 2 of each: 0.508 global with the
    fleet's statistics, 0.944 with each device's own), so such a folder is standardized with each
    device's own statistics, which do not depend on the scale, and the decision says so."""
    mixed = saved is not None and saves_uint8(saved)
    if standardize is not None:  # the flags keep 8-bit intensities as saved; data_findings says so
        # --standardize: only those beside uint8 splits, which it standardizes with x / 255's statistics
        pixels = eight_bit(data, saved) if saved is not None and (mixed or not standardize) else None
        two_scales = bool(standardize) and mixed and bool(pixels)
        decision = Standardizing(bool(standardize), "on" if standardize else "off", eight_bit=pixels or "",
                                 beside_uint8=mixed and bool(pixels), using="device" if two_scales else using)
        if two_scales and using == "fleet":
            log.warning("--standardize: each device standardizes with its own statistics, not the fleet's: its "
                        "splits are on two scales (uint8 read as x / 255, 8-bit intensities saved as %s as saved), "
                        "which pooled statistics would mix", pixels)
        return replace(standardize_devices(data, decision.using, held_out) if decision.on else data,
                       standardizing=decision)
    finding = scale_finding(data)
    # a uint8 split beside the others: a float x_test beside a uint8 x_train leaves the training pool unflagged.
    # A pretrained --model keeps its inputs as saved, unless some are uint8: those every reader takes as
    # x / 255, so 8-bit splits beside them saved as float would reach it at 255 times their scale.
    asks = saved is not None and (mixed or (finding is not None and not pretrained))
    pixels = eight_bit(data, saved) if asks else None
    if pixels:
        return replace(read_as_uint8(data, saved),
                       standardizing=Standardizing(False, "auto", finding, "", pixels, beside_uint8=mixed,
                                                   using=using))
    decision = Standardizing(finding is not None and not pretrained, "auto", finding, pretrained, using=using)
    return replace(standardize_devices(data, using, held_out) if decision.on else data, standardizing=decision)
