"""Test / train RMS ratios (edge_runtime/split_scale.py) over honest data files and over scale
mistakes, seeds 0-2: `.venv-test/bin/python benchmarks/results/2026-12-06-test-scale/ratios.py
> ratios.json` (about a minute). "device-standardized": wine / breast-cancer files each
standardized with its own training split's statistics, kept apart: over 40-60 devices a training
split of 2-3 examples has a near-zero std in some feature, and its test values are that far off."""
import json

import numpy as np
from sklearn.datasets import load_breast_cancer, load_wine

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.edge_runtime.split_scale import rms
from fedge.tools.datasets import build_federated, load_shipped
from fedge.tools.partition import partition


def ratio(a, b):
    ta, tb = rms(a), rms(b)
    return None if ta == 0 or tb == 0 else tb / ta

honest, mistakes, devstd = [], [], []
def add(kind, name, xtr, xte):
    r = ratio(xtr, xte)
    if r is not None:
        (honest if kind == "h" else devstd if kind == "d" else mistakes).append((name, r))

def files_of(x, y, devices, seed, alpha):
    """Dirichlet(alpha) label skew, then an unstratified 20% holdout: test classes training may lack."""
    rng = np.random.default_rng(seed)
    for idx in partition("dirichlet", y, devices, rng, alpha=alpha):
        if len(idx) < 2:
            continue
        idx = rng.permutation(idx)
        k = max(1, round(0.2 * len(idx)))
        yield x[idx[k:]], x[idx[:k]]

def std_dev(xtr, xte):  # per-device standardization (a user's own, with the training split's statistics)
    m, s = xtr.mean(0), xtr.std(0)
    s[s == 0] = 1
    return (xtr - m) / s, (xte - m) / s

tab = {"wine": load_wine(return_X_y=True), "breast_cancer": load_breast_cancer(return_X_y=True)}
for seed in (0, 1, 2):
    # fedge data split's files (build_federated), every partition, few and many devices
    for ds in ("mnist5k", "digits"):
        for part in ("iid", "dirichlet", "shards", "quantity", "feature"):
            for dev in (2, 20, 100, 300):
                try:
                    data = build_federated(ds, dev, part, seed)
                except (DatasetError, ValueError):
                    continue
                for c in data.clients:
                    add("h", f"{ds}/{part}/{dev}/s{seed}", c.x_train, c.x_test)
                    add("h", f"{ds}/{part}/{dev}/s{seed}/one-train", c.x_train[:1], c.x_test)
                    if part == "dirichlet" and dev == 20:
                        add("m", f"{ds} x_test*255", c.x_train, c.x_test * 255)
                        add("m", f"{ds} x_test/255 beside 0..255", c.x_train * 255, c.x_test)
    # unstratified holdout of tiny Dirichlet 0.1 devices: test classes the training split lacks
    for ds in ("mnist5k", "digits"):
        x, y = load_shipped(ds)
        for dev in (100, 400):
            for xtr, xte in files_of(x, y, dev, seed, 0.1):
                add("h", f"{ds}/dirichlet-unstratified/{dev}/s{seed}", xtr, xte)
                add("h", f"{ds}/dirichlet-unstratified/{dev}/s{seed}/one-train", xtr[:1], xte)
    for ds, (x, y) in tab.items():
        x = x.astype(np.float32)
        xg = (x - x.mean(0)) / x.std(0)  # standardized over the whole set before splitting
        for dev in (2, 5, 20, 40, 60):
            for xtr, xte in files_of(x, y, dev, seed, 0.1):
                add("h", f"{ds}/raw/{dev}/s{seed}", xtr, xte)
                add("h", f"{ds}/raw/{dev}/s{seed}/one-train", xtr[:1], xte)
                a, b = std_dev(xtr, xte)
                add("d", f"{ds}/device-standardized/{dev}/s{seed}", a, b)
                add("m", f"{ds} raw x_test beside device-standardized x_train", a, xte)
                add("m", f"{ds} x_test*255 (raw)", xtr, xte * 255)
            for xtr, xte in files_of(xg, y, dev, seed, 0.1):
                add("h", f"{ds}/standardized/{dev}/s{seed}", xtr, xte)
                add("h", f"{ds}/standardized/{dev}/s{seed}/one-train", xtr[:1], xte)
            pairs = zip(files_of(xg, y, dev, seed, 0.1), files_of(x, y, dev, seed, 0.1))
            for (xtr, xte), (_, raw) in pairs:
                add("m", f"{ds} raw x_test beside standardized x_train", xtr, raw)
                add("m", f"{ds} x_test*255 (standardized)", xtr, xte * 255)

def summary(rows):
    lo, hi = min(rows, key=lambda t: t[1]), max(rows, key=lambda t: t[1])
    return {"files": len(rows), "min": lo, "max": hi}

out = {"honest": summary(honest), "mistakes": {}}
for name in sorted({n for n, _ in mistakes}):
    rs = [v for n, v in mistakes if n == name]
    out["mistakes"][name] = {"files": len(rs), "min": min(rs), "max": max(rs)}
out["device-standardized"] = summary(devstd)
for limit in (16,):
    out[f"honest fired at {limit}"] = sum(1 for _, v in honest if v > limit or v < 1 / limit)
    out[f"devstd fired at {limit}"] = sum(1 for _, v in devstd if v > limit or v < 1 / limit)
    out[f"mistakes missed at {limit}"] = sum(1 for _, v in mistakes if 1 / limit <= v <= limit)
print(json.dumps(out, indent=1))
