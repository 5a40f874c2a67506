"""Load time of 20,000 files of 6 examples through load_npz_dir: the first run builds them in
/tmp/npzf-many, the next ones time the load (results in load_many.txt)."""

import resource
import sys
import time
from pathlib import Path

import numpy as np

root = Path("/tmp/npzf-many")
if not root.exists():
    root.mkdir()
    rng = np.random.default_rng(0)
    centres = np.random.default_rng(99).normal(size=(3, 16)) * 2
    for i in range(20000):
        y = rng.integers(0, 3, 6)
        x = (centres[y] + rng.normal(size=(6, 16))).astype(np.float32)
        np.savez(root / f"dev{i:05d}.npz", x_train=x[:5], y_train=y[:5], x_test=x[5:], y_test=y[5:])
    print("built")
    sys.exit()

from fedge.tools.datasets import load_npz_dir  # noqa: E402 - after the build, which does not need it

t = time.perf_counter()
d = load_npz_dir(root)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print({"devices": len(d.clients), "load_s": round(dt, 2), "max_rss_mb": rss})
