"""Fleet statistics from sums only: `fedge device moments` writes one device's Moments of its
training split (count, per-feature mean, m2 and mean_residual: kernel/features.py) as it reads
its data, before any standardization; `fedge data combine-moments A.npz B.npz ... --out FILE`
pools them into the `mean` and `std` a device's `[data] statistics = FILE` applies.

What moves: each device's count and per-feature mean and spread, never an example. Without
secure aggregation of these files whoever collects them sees each device's moments; the pooled
file shows the fleet's per-feature mean and std. Neither is covered by the DP accountant.

Both commands write only a new file or one the same command wrote (its `written_by` array): a
file fedge did not write is never replaced (ConfigError naming it)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from fedge.edge_runtime.fleet_statistics import read_npz_file
from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.edge_runtime.kernel.features import Moments, combine_moments, feature_moments
from fedge.edge_runtime.kernel.files import atomic_write_bytes, load_npz
from fedge.tools.cli_args import path_arg

MOMENTS_BY = "fedge device moments"
STATISTICS_BY = "fedge data combine-moments"
MOMENT_KEYS = ("count", "mean", "m2", "mean_residual")


def add_moments_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=path_arg, help="device TOML (its [data] npz)")
    p.add_argument("--out", required=True, type=path_arg, help=".npz to write: count, mean, m2, mean_residual")


def add_combine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("moments", nargs="+", type=path_arg, help="the devices' `fedge device moments` files")
    p.add_argument("--out", required=True, type=path_arg,
                   help=".npz to write: mean, std (a device's [data] statistics)")


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
    check_output(out, STATISTICS_BY)
    parts = [read_moments(Path(p)) for p in args.moments]
    mean, std = combine_moments(parts, names=list(args.moments))
    count = sum(p.count for p in parts)
    write_npz(out, STATISTICS_BY, mean=mean, std=std, count=np.int64(count), devices=np.int64(len(parts)))
    print(f"wrote {out}: the pooled mean and std of {mean.size} features over {count} training examples of "
          f"{len(parts)} moments files; set [data] statistics = \"{out}\" with standardize = true on every device")
    return 0


def read_moments(path: Path) -> Moments:
    """A moments file as `fedge device moments` writes it, or DatasetError naming it."""
    arrays = read_npz_file(path, MOMENT_KEYS, DatasetError, str(path), "`fedge device moments`")
    count = arrays["count"]
    if count.shape != () or count.dtype.kind not in "iu":
        raise DatasetError(f"{path}: count is {count.dtype} of shape {count.shape}, not one whole number")
    return Moments(int(count), *(arrays[k].astype(np.float64) for k in MOMENT_KEYS[1:]))


def check_output(out: Path, command: str) -> None:
    """ConfigError unless `out` may take this command's file: nothing there, or an .npz whose
    written_by is `command` (a rerun replaces its own). The write renames a file over the path."""
    from fedge.tools.beside_json import output_file_problem

    if out.is_file():
        try:
            ours = str(load_npz(out, only=("written_by",)).get("written_by")) == command
        except Exception:  # noqa: BLE001 - any file numpy cannot read is not fedge's
            ours = False
        if not ours:
            raise ConfigError(f"--out {out}: the file there is not one `{command}` wrote, so fedge did not write it "
                              "(fedge never replaces a file it did not write): move it, or name another file")
        return
    problem = output_file_problem(out)
    if problem:
        raise ConfigError(f"--out {out}: {problem}")


def write_npz(out: Path, command: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, written_by=np.array(command), **arrays)
    atomic_write_bytes(out, buf.getvalue())
