"""Per-device npz folders for scikit-learn's wine and breast cancer: Dirichlet label skew
(tools/partition.py), features standardized once over the pool, 80/20 train/test per device.

    python mkdata.py cancer|wine DEVICES ALPHA SEED OUT
"""

import os
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

from fedge.tools.partition import dirichlet_label_skew

name, devices, alpha, seed, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
x, y = (load_wine if name == "wine" else load_breast_cancer)(return_X_y=True)
x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
rng = np.random.default_rng(seed)
os.makedirs(out, exist_ok=True)
for i, idx in enumerate(dirichlet_label_skew(y, devices, alpha, rng)):
    idx = rng.permutation(idx)
    k = max(1, int(round(0.8 * len(idx))))
    np.savez(f"{out}/dev{i:02d}.npz", x_train=x[idx[:k]], y_train=y[idx[:k]], x_test=x[idx[k:]], y_test=y[idx[k:]])
    print(i, len(idx), np.bincount(y[idx], minlength=y.max() + 1))
