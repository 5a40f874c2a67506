"""What a device with `[data] standardize = true` applies to its features, recorded for `fedge
device export` (tools/device_export.py): the per-feature (mean, std) of kernel/features.py, in
<state_dir>/<device_id>/standardization.npz, written at start and at each SIGHUP reload once
the new data is in use, and removed at a start with standardize = false.

The export once recomputed them from the data file as it was at export: a file replaced since
the device loaded it (before its SIGHUP, or on a stopped device) put another mean and std in
front of a model trained and evaluated with the old ones. Like the device's other state, the
file never leaves the device. It records where the numbers came from too (`statistics`: the
[data] statistics file's path, or "" for the device's own), so the export describes the numbers
it applies, not whatever the config says now; a record written before it has no `statistics`,
and the export describes it from the config, as it did."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .kernel.device_folder import STANDARDIZATION_FILE
from .kernel.errors import DeviceStateError
from .kernel.files import atomic_write_bytes, load_npz

Statistics = tuple[np.ndarray, np.ndarray]  # (mean, std), float64, the per-example shape


def record_standardization(own: str | Path, stats: Statistics | None, statistics: str | Path = "") -> None:
    """Write `stats` to own/standardization.npz, with `statistics` (the [data] statistics file they
    came from; "" for the device's own), or remove that file (fedge's own) when stats is None."""
    path = Path(own) / STANDARDIZATION_FILE
    if stats is None:
        path.unlink(missing_ok=True)
        return
    buf = io.BytesIO()
    np.savez(buf, mean=stats[0], std=stats[1], statistics=np.array(str(statistics)))
    atomic_write_bytes(path, buf.getvalue())


def recorded_standardization(own: str | Path) -> Statistics | None:
    """The (mean, std) the device recorded, None where it recorded none, or DeviceStateError
    naming a damaged file."""
    path = Path(own) / STANDARDIZATION_FILE
    if not path.exists():
        return None
    try:
        arrays = load_npz(path)
        mean, std = arrays["mean"].astype(np.float64), arrays["std"].astype(np.float64)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: named, never a traceback
        raise DeviceStateError(f"{path}: not a standardization fedge recorded ({exc}); restart the device "
                               "(it writes it at start) or remove the file") from None
    if mean.shape != std.shape or not (np.isfinite(mean).all() and (std > 0).all()):
        raise DeviceStateError(f"{path}: mean {mean.shape} and std {std.shape} are not a standardization fedge "
                               "recorded (shapes differ, or a value is not finite or a std not positive); "
                               "restart the device (it writes it at start) or remove the file")
    return mean, std


def recorded_source(own: str | Path) -> str | None:
    """Where the recorded standardization came from: the [data] statistics file's path, "" for the
    device's own statistics, or None where the record does not say (none, or one written before
    fedge recorded it) or cannot be read (recorded_standardization names that)."""
    try:
        source = load_npz(Path(own) / STANDARDIZATION_FILE, only=("statistics",)).get("statistics")
    except Exception:  # noqa: BLE001 - absent or damaged: recorded_standardization says which
        return None
    return str(source) if source is not None and source.dtype.kind == "U" and source.shape == () else None
