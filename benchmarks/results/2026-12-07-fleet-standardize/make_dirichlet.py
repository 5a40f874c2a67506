"""How runs.json's `dirichlet` folders were made (a record, not a tool).

    python make_dirichlet.py OUT    # OUT/<wine|breast>-s<seed>-raw/c<i>.npz, 10 files, Dirichlet 0.1, seeds 0-2

Each file: the device's examples as scikit-learn ships them (float32, raw units), 80% train / 20% test.
Then: fedge simulate --data OUT/wine-s0-raw --clients-per-round 5 --rounds 20 --seed 0 [--standardize-with device]
"""

import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

from fedge.tools.partition import dirichlet_label_skew

OUT = Path(sys.argv[1])
for name, loader in (("wine", load_wine), ("breast", load_breast_cancer)):
    X, y = loader(return_X_y=True)
    X = X.astype(np.float32)
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        folder = OUT / f"{name}-s{seed}-raw"
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(dirichlet_label_skew(y, 10, 0.1, rng)):
            idx = rng.permutation(idx)
            k = max(1, int(round(0.8 * len(idx))))
            np.savez(folder / f"c{i}.npz", x_train=X[idx[:k]], y_train=y[idx[:k]], x_test=X[idx[k:]], y_test=y[idx[k:]])
