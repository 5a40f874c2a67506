"""How benchmarks/results/2026-12-05-standardize-heldout.json was made (a record, not a tool).

    python 2026-12-05-standardize-heldout.py OUT      # writes OUT/<data>[-raw]/clientNN.npz
    for d in wine wine-raw bc bc-raw iris iris-raw; do for s in 0 1; do for x in "" --standardize; do
        fedge simulate --data OUT/$d --rounds 15 --seed $s $x --quiet --json OUT/$d-$s$x.json; done; done; done

Three scikit-learn data sets (wine, breast cancer, iris) over 10 clients, Dirichlet(0.5) label
split, 75/25 train/test per client; "-raw" keeps the features as shipped, the others are
standardized once with the pooled mean and std before the split."""

import os
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, load_wine

out = sys.argv[1]
rng = np.random.default_rng(0)
for name, loader in [("wine", load_wine), ("bc", load_breast_cancer), ("iris", load_iris)]:
    for raw in (True, False):
        X, y = loader(return_X_y=True)
        X = X.astype(np.float32)
        if not raw:
            X = (X - X.mean(0)) / X.std(0)
        idx = [[] for _ in range(10)]
        for c in np.unique(y):
            ids = rng.permutation(np.where(y == c)[0])
            cuts = (np.cumsum(rng.dirichlet([0.5] * 10)) * len(ids)).astype(int)[:-1]
            for i, part in enumerate(np.split(ids, cuts)):
                idx[i] += list(part)
        d = os.path.join(out, name + ("-raw" if raw else ""))
        os.makedirs(d, exist_ok=True)
        for i, ids in enumerate(idx):
            ids = rng.permutation(ids)
            if len(ids) < 4:
                ids = np.concatenate([ids, rng.choice(len(y), 4, replace=False)])
            k = max(1, int(0.75 * len(ids)))
            np.savez(f"{d}/client{i:02d}.npz", x_train=X[ids[:k]], y_train=y[ids[:k]].astype(np.int64),
                     x_test=X[ids[k:]], y_test=y[ids[k:]].astype(np.int64))
