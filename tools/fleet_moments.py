"""Fleet statistics from sums only: `fedge device moments` writes one device's Moments of its
training split (count, per-feature mean, m2 and mean_residual: kernel/features.py) as it reads
its data, before any standardization; `fedge data combine-moments A.npz B.npz ... --out FILE`
pools them into the `mean` and `std` a device's `[data] statistics = FILE` applies.

What moves: each device's count and per-feature mean and spread, never an example. Without
secure aggregation of these files whoever collects them sees each device's moments; the pooled
file shows the fleet's per-feature mean and std. Neither is covered by the DP accountant.

combine-moments trusts its inputs apart from its checks: each file is read with a size limit
(npz_members.py: a file whose arrays inflate past MAX_MOMENTS_BYTES is refused from its
headers), a count above --max-examples (default DEFAULT_MAX_EXAMPLES, as the coordinator's
max_examples caps an update's claimed weight) is refused, and a pooled mean or std that is not
finite is refused before anything is written. It prints each file's count and share of the
total, so a file that dominates the pool is seen; within the cap, a device that lies still skews
the fleet's statistics, and the coordinator's robust aggregation does not cover them.

Both commands write only a new file or one the same command wrote (its `written_by` array): a
file fedge did not write is never replaced (ConfigError naming it)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from fedge.edge_runtime.fleet_statistics import STATISTICS_BY, read_numbers
from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.edge_runtime.kernel.features import Moments, combine_moments, feature_moments
from fedge.edge_runtime.kernel.files import atomic_write_bytes, load_npz
from fedge.edge_runtime.kernel.wire_fields import MAX_EXAMPLES
from fedge.edge_runtime.npz_members import NpzLimits
from fedge.tools.cli_args import path_arg

MOMENTS_BY = "fedge device moments"
MOMENT_KEYS = ("count", "mean", "m2", "mean_residual")
# The most features a moments file may describe: 2**21 (an example of 1024 x 1024 x 2; CIFAR-10's
# has 3,072, MNIST's 784), three float64 arrays of it and the count, 48 MiB: a file whose arrays
# inflate beyond is refused from its .npy headers, before anything is allocated.
MAX_MOMENT_FEATURES = 1 << 21
MAX_MOMENTS_BYTES = 3 * 8 * MAX_MOMENT_FEATURES + 8
# A moments file's count above this is refused: CoordinatorConfig.max_examples' default (the
# claim an update is weighted by, at most; coordinator/weights.py), above any one edge device's
# training set in our fleets and benchmarks. Raise it with --max-examples for a fleet of larger.
DEFAULT_MAX_EXAMPLES = 100_000


def add_moments_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=path_arg, help="device TOML (its [data] npz)")
    p.add_argument("--out", required=True, type=path_arg, help=".npz to write: count, mean, m2, mean_residual")


def add_combine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("moments", nargs="+", type=path_arg, help="the devices' `fedge device moments` files")
    p.add_argument("--out", required=True, type=path_arg,
                   help=".npz to write: mean, std (a device's [data] statistics)")
    p.add_argument("--max-examples", type=int, default=DEFAULT_MAX_EXAMPLES, metavar="N",
                   help=f"refuse a moments file that claims more training examples (default {DEFAULT_MAX_EXAMPLES:,}, "
                        f"the coordinator's max_examples; at most {MAX_EXAMPLES:,})")


def run_moments(args) -> int:
    from fedge.edge_runtime.device_config import load_device_config, read_local_data

    out = Path(args.out)
    check_output(out, MOMENTS_BY)
    cfg = load_device_config(args.config)
    x_train = read_local_data(cfg.data.npz)[0].x_train  # as the device reads it, not standardized
    moments = feature_moments(x_train)
    write_npz(out, MOMENTS_BY, count=np.int64(moments.count), mean=moments.mean, m2=moments.m2,
              mean_residual=moments.mean_residual)
    print(f"wrote {out}: device {cfg.device_id}, {moments.count} training examples, {moments.mean.size} features "
          f"(their count, mean and spread; no example)")
    return 0


def run_combine(args) -> int:
    out = Path(args.out)
    if not 1 <= args.max_examples <= MAX_EXAMPLES:
        raise ConfigError(f"--max-examples {args.max_examples}: must be in [1, {MAX_EXAMPLES}] (the protocol's bound "
                          "on one device's dataset)")
    check_output(out, STATISTICS_BY)
    parts = [read_moments(Path(p)) for p in args.moments]
    mean, std = combine_moments(parts, names=list(args.moments), max_count=args.max_examples)
    count = sum(p.count for p in parts)
    for name, part in zip(args.moments, parts):  # a file that dominates the pool shows here
        print(f"{name}: {part.count} training examples, {part.count / count:.1%} of the pooled statistics")
    write_npz(out, STATISTICS_BY, mean=mean, std=std, count=np.int64(count), devices=np.int64(len(parts)))
    print(f"wrote {out}: the pooled mean and std of {mean.size} features over {count} training examples of "
          f"{len(parts)} moments files; set [data] statistics = \"{out.resolve()}\" with standardize = true on "
          f"every device")
    return 0


def read_moments(path: Path) -> Moments:
    """A moments file as `fedge device moments` writes it, or DatasetError naming it."""
    limits = NpzLimits(MAX_MOMENTS_BYTES, 8, "moments file", f"name the .npz `{MOMENTS_BY}` wrote",
                       f" (moments of {MAX_MOMENT_FEATURES:,} features at most)")
    arrays = read_numbers(path, MOMENT_KEYS, limits, str(path))
    count = arrays["count"]
    if count.shape != () or count.dtype.kind not in "iu":
        raise DatasetError(f"{path}: count is {count.dtype} of shape {count.shape}, not one whole number")
    return Moments(int(count), *(arrays[k].astype(np.float64) for k in MOMENT_KEYS[1:]))


def check_output(out: Path, command: str) -> None:
    """ConfigError unless `out` may take this command's file: nothing there, or an .npz whose
    written_by is `command` (a rerun replaces its own). The write renames a file over the path."""
    from fedge.tools.beside_json import check_own_output

    check_own_output(out, lambda path: str(load_npz(path, only=("written_by",)).get("written_by")) == command,
                     f"not one `{command}` wrote")


def write_npz(out: Path, command: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, written_by=np.array(command), **arrays)
    atomic_write_bytes(out, buf.getvalue())
