"""One split of examples as a device or the simulator reads it from an .npz: the checks both
make before anything trains (a NaN loss or an ONNX Runtime index error mid-task otherwise),
and one layout per example across splits (LayoutCheck).

Used by the device's own data file (device_config.load_local_data, at start and at each SIGHUP
reload) and by `fedge simulate --data` (tools/datasets.load_npz_dir), which adds what only
it knows: flattened features and a cap on the number of classes.

Layouts: examples that flatten to the same width can still be laid out differently (a client
that saved its images channels-last, (n, 32, 32, 3), beside others' channels-first (n, 3, 32,
32)). The simulator flattened them alike and trained on them as if their values lined up, with
no word (a probe, 2026-12-06: digits as 2 channels of 32 values, one client of five
channels-last, ended at 0.83 global accuracy where digits laid out alike reached 0.93, seed 0,
5 rounds), and a device reshapes each split to the model's input, so an x_test laid out
otherwise than its x_train was evaluated as garbage, silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.features import example_layout
from .kernel.split_check import MODEL_MAX_CLASSES, check_split  # noqa: F401 - the device's and simulator's entry


class LayoutCheck:
    """Remembers the first split whose examples have more than one axis (after example_layout)
    and refuses a later one laid out otherwise. Flat examples (n, d) pass: a width check
    covers them, and a flattened copy of any layout is as likely to be row-major as not. Empty
    splits pass: they hold no values to misalign."""

    def __init__(self) -> None:
        self.first: tuple[Path, str, tuple[int, ...]] | None = None

    def check(self, file: Path, split: str, x: np.ndarray) -> None:
        layout = example_layout(x)
        if len(x) == 0 or len(layout) < 2:
            return
        if self.first is None:
            self.first = (file, split, layout)
            return
        first_file, first_split, first_layout = self.first
        if layout != first_layout:
            where = "its x_" + first_split if first_file == file else f"{first_file.name}'s x_{first_split}"
            raise DatasetError(
                f"{file}: x_{split} holds examples of shape {x.shape[1:]} but {where} holds {first_layout}; "
                f"both flatten to {int(np.prod(layout))} values, in a different order, so a model would "
                f"read one as the other (channels-last beside channels-first?). Save every split of every "
                f"client in one layout (np.moveaxis(x, -1, 1) turns channels-last into channels-first)")
