"""wine / breast_cancer (sklearn, raw features as a user saves them) split like build_federated:
tools.partition + stratified_holdout, same spawn streams. OUT/<ds>-<part>-s<seed>/dev-XXX.npz"""
import os
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

from fedge.tools.datasets import stratified_holdout
from fedge.tools.partition import partition

OUT = sys.argv[1]
DEV = {"wine": 10, "breast_cancer": 10}
for ds, loader in (("wine", load_wine), ("breast_cancer", load_breast_cancer)):
    X, y = loader(return_X_y=True)
    X = X.astype(np.float32)
    for part, alpha in (("iid", None), ("dir0.1", 0.1), ("dir0.5", 0.5)):
        for seed in (3, 4, 5, 11):
            d = f"{OUT}/{ds}-{part}-s{seed}"
            os.makedirs(d, exist_ok=True)
            prng, srng = np.random.default_rng(seed).spawn(2)
            try:
                parts = partition("iid" if alpha is None else "dirichlet", y, DEV[ds], prng, alpha=alpha or 0.1)
            except ValueError as e:
                print(d, "PARTITION FAILED", e)
                continue
            for k, idx in enumerate(parts):
                te, tr = stratified_holdout(y[idx], 0.2, srng)
                te, tr = idx[te], idx[tr]
                np.savez(f"{d}/dev-{k:03d}.npz", x_train=X[tr], y_train=y[tr], x_test=X[te], y_test=y[te])
            print(d, [len(p) for p in parts])
