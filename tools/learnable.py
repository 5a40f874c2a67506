"""What a `fedge simulate --data` folder must hold for a model to learn anything from it, checked
once every file has loaded: training examples of at least 2 classes, and some feature that varies.

Each file alone may hold one class or constant features (a device of one label, a sensor that
never moved); the folder as a whole may not. Both ran to the end before, looking like runs: a
folder whose every y was 0 trained a 2-output model and reported a global accuracy of 1.0 (the
load warned only that label 1 never appears), and one whose every x was 0 (or 3.0) was
"standardized" to zeros on every device and ended at the constant guess, the end-of-run warning
advising a lower --lr (a probe, 2026-12-07)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedge.edge_runtime.kernel.errors import DatasetError

if TYPE_CHECKING:
    from fedge.tools.datasets import ClientData


def check_learnable(root: Path, clients: Sequence[ClientData], cast_lost: bool = False) -> None:
    """DatasetError naming the folder when its training labels are one class in total, or when
    every feature holds one value in every training example of every file (as float32: `cast_lost`,
    some file's features lost variation in that cast, float32_steps.py, and the error says so)."""
    labels = np.unique(np.concatenate([c.y_train for c in clients]))
    if len(labels) == 1:
        raise DatasetError(f"{root}: every file's y_train holds only label {labels[0]} ({len(clients)} file(s)); "
                           f"a classifier needs training examples of at least 2 classes, and one that sees a "
                           f"single class learns nothing (its accuracy is trivially 1.0). Check that y_train is "
                           f"the label array you meant")
    first = clients[0].x_train[0]
    if all((c.x_train == first).all() for c in clients):  # exact: one value per feature, in every file
        shown = ", ".join(f"{v:g}" for v in first[:5]) + (", ..." if len(first) > 5 else "")
        raise DatasetError(f"{root}: every training example of every file has the same features ({shown}); "
                           f"a model cannot tell the labels apart from features that never vary. "
                           + ("They varied as saved, and the cast to float32 that every reader makes erased it (the "
                              "warnings above): subtract an offset before saving" if cast_lost else
                              "Check that x_train is the feature array you meant"))
