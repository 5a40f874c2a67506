"""How the --data folders of benchmarks/results/2026-12-06-unseen-data/runs.json were made (a record, not a tool).

    python make_data.py OUT      # writes OUT/<case>/<client>.npz and OUT/<case>/../<case>.oracle.json

Each case is a folder of per-client .npz files (x_train, y_train, x_test, y_test) as README
"Bring your own data" describes. scikit-learn's wine, breast_cancer and digits are read from the
files inside the installed wheel (sklearn.datasets.load_*: no download); the rest is synthetic.
The oracle is a centralized logistic regression (scikit-learn, features standardized with the
pooled training mean and std) fitted on every client's x_train and scored on every client's x_test.
"""

import json
import os
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

OUT = sys.argv[1]


def split_iid(n, clients, rng):
    return np.array_split(rng.permutation(n), clients)


def write(case, X, y, parts, rng, test_frac=0.25, dtype=None, ydtype=np.int64, layout=None):
    d = os.path.join(OUT, case)
    os.makedirs(d, exist_ok=True)
    xtr, ytr, xte, yte = [], [], [], []
    for i, ids in enumerate(parts):
        ids = rng.permutation(ids)
        k = len(ids) - int(test_frac * len(ids)) if len(ids) > 1 else 1
        a, b = ids[:k], ids[k:]
        xs = X.astype(dtype) if dtype is not None else X
        xs = layout(i, xs) if layout is not None else xs
        np.savez(f"{d}/client{i:02d}.npz", x_train=xs[a], y_train=y[a].astype(ydtype),
                 x_test=xs[b], y_test=y[b].astype(ydtype))
        for acc, arr in ((xtr, X[a]), (ytr, y[a]), (xte, X[b]), (yte, y[b])):
            acc.append(arr)
    flat = [[a.reshape(len(a), int(np.prod(a.shape[1:]))) if a.ndim > 1 else a for a in part]
            for part in (xtr, ytr, xte, yte)]
    xtr, ytr, xte, yte = map(np.concatenate, flat)
    sc = StandardScaler().fit(xtr.astype(np.float64))
    clf = LogisticRegression(max_iter=5000).fit(sc.transform(xtr.astype(np.float64)), ytr)
    acc = float((clf.predict(sc.transform(xte.astype(np.float64))) == yte).mean())
    majority = float(np.mean(yte == np.bincount(ytr.astype(np.int64)).argmax())) if ytr.dtype.kind in "iu" else None
    with open(os.path.join(OUT, case + ".oracle.json"), "w") as fh:
        json.dump({"case": case, "oracle_logreg_accuracy": acc, "majority_accuracy": majority,
                   "train": int(len(ytr)), "test": int(len(yte)), "clients": len(parts)}, fh)


def std(X):
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32)


def blobs(n, d, classes, rng, sep=3.0):
    centers = rng.normal(0, sep, (classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


rng = np.random.default_rng(0)
Xw, yw = load_wine(return_X_y=True)
Xb, yb = load_breast_cancer(return_X_y=True)
Xd, yd = load_digits(return_X_y=True)
write("wine-std", std(Xw), yw, split_iid(len(yw), 5, rng), rng)
write("wine-raw", Xw.astype(np.float32), yw, split_iid(len(yw), 5, rng), rng)
write("wine-raw-f64", Xw, yw, split_iid(len(yw), 5, rng), rng, dtype=np.float64)
write("bc-std", std(Xb), yb, split_iid(len(yb), 5, rng), rng)
write("bc-raw", Xb.astype(np.float32), yb, split_iid(len(yb), 5, rng), rng)  # values up to ~4e3
write("digits-int", Xd.astype(np.int64), yd, split_iid(len(yd), 5, rng), rng, dtype=np.int64)  # 0..16 ints
write("digits-01", (Xd / 16).astype(np.float32), yd, split_iid(len(yd), 5, rng), rng)
# 1 feature, 3 classes separable by thresholds
x1 = rng.normal(0, 1, 600).astype(np.float32)
y1 = np.digitize(x1, [-0.5, 0.5])
write("one-feature", x1[:, None], y1, split_iid(600, 5, rng), rng)
X2, y2 = blobs(400, 5, 2, rng, sep=1.0)
write("two-class", X2, y2, split_iid(400, 5, rng), rng)
X40, y40 = blobs(2400, 20, 40, rng, sep=2.0)
write("forty-class", X40, y40, split_iid(2400, 5, rng), rng)
# labels {3, 7, 11}: codes, not indices
Xs, ys = blobs(600, 8, 3, rng, sep=1.5)
write("labels-3-7-11", Xs, np.array([3, 7, 11])[ys], split_iid(600, 5, rng), rng)
write("labels-strings", Xs, np.array(["a", "b", "c"])[ys], split_iid(600, 5, rng), rng, ydtype=str)
write("labels-float", Xs, ys, split_iid(600, 5, rng), rng, ydtype=np.float64)
# unscaled: ~1e4
Xu, yu = blobs(600, 8, 3, rng, sep=1.5)
write("scale-1e4", Xu * 1e4 + 2e4, yu, split_iid(600, 5, rng), rng)
# a client with 1 example (train only)
parts = split_iid(600, 5, rng)
parts[0] = parts[0][:1]
write("one-example-client", Xs, ys, parts, rng)
# a client with every example of one class
Xo, yo = blobs(600, 8, 3, rng, sep=1.5)
rest = np.flatnonzero(yo != 0)
parts = [np.flatnonzero(yo == 0)] + list(np.array_split(rng.permutation(rest), 4))
write("one-class-client", Xo, yo, parts, rng)
# very unequal sizes: 1000 / 100 / 10 / 5 / 3
Xq, yq = blobs(1118, 8, 3, rng, sep=1.5)
cuts = np.cumsum([1000, 100, 10, 5])
write("unequal-sizes", Xq, yq, np.split(rng.permutation(1118), cuts), rng)
# features that barely vary: the blobs above at a std of ~1e-4
write("scale-1e-4", (Xu * 1e-4).astype(np.float32), yu, split_iid(600, 5, rng), rng)
# one client saves its 2-channel signals channels-last (n, 32, 2), the others channels-first (n, 2, 32):
# digits scaled to [0, 1], its 64 pixels read as 2 channels of 32 values
digits2 = (Xd / 16).astype(np.float32).reshape(-1, 2, 32)
write("layout-mismatch", digits2, yd, split_iid(len(yd), 5, rng), rng,
      layout=lambda i, x: x.transpose(0, 2, 1) if i == 4 else x)
# a scale sweep: standardized 3-class blobs times s (the numbers behind BARELY_VARIES)
sweep_rng = np.random.default_rng(1)
c3 = sweep_rng.normal(0, 1.5, (3, 8))
y3 = sweep_rng.integers(0, 3, 600)
X3 = c3[y3] + sweep_rng.normal(0, 1, (600, 8))
X3 = (X3 - X3.mean(0)) / X3.std(0)
for s in ("1", "0.1", "0.03", "0.01", "0.001"):
    case, split_rng = f"sweep-{s}", np.random.default_rng(2)
    os.makedirs(os.path.join(OUT, case), exist_ok=True)
    xtr, ytr, xte, yte = [], [], [], []
    for i, ids in enumerate(np.array_split(split_rng.permutation(600), 5)):
        k = int(0.75 * len(ids))
        xs = (X3 * float(s)).astype(np.float32)
        np.savez(os.path.join(OUT, case, f"c{i}.npz"), x_train=xs[ids[:k]], y_train=y3[ids[:k]],
                 x_test=xs[ids[k:]], y_test=y3[ids[k:]])
        xtr.append(xs[ids[:k]]); ytr.append(y3[ids[:k]]); xte.append(xs[ids[k:]]); yte.append(y3[ids[k:]])  # noqa: E702
    xtr, ytr, xte, yte = map(np.concatenate, (xtr, ytr, xte, yte))
    sc = StandardScaler().fit(xtr.astype(np.float64))
    clf = LogisticRegression(max_iter=5000).fit(sc.transform(xtr.astype(np.float64)), ytr)
    with open(os.path.join(OUT, case + ".oracle.json"), "w") as fh:
        json.dump({"case": case, "oracle_logreg_accuracy": float((clf.predict(sc.transform(xte)) == yte).mean()),
                   "majority_accuracy": float(np.mean(yte == np.bincount(ytr).argmax())),
                   "train": int(len(ytr)), "test": int(len(yte)), "clients": 5}, fh)
