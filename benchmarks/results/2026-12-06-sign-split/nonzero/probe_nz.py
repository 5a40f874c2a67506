"""Probe: the gated sign split with shares over each row's nonzero sampled coordinates (top-k updates).

Not shipped. Registers `nb_sg_nz` beside ../../2026-12-06-robust-research/probe.py's rules
(behind the default's clip, cap and exclusion, as they are). Run:

    .venv-test/bin/python benchmarks/results/2026-12-06-sign-split/nonzero/probe_nz.py --json nz-c0.json \
        --defenses nb_sg_nz --attacks sign_flip,none --partitions dirichlet --fractions 0.2 --rounds 100 \
        --seed 0 --compressed --workers 1
"""
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "2026-12-06-robust-research"))
import numpy as np
from probe import RULES, _factory, _kept_mean, _separated, kmeans2

from fedge.coordinator.aggregate import AGGREGATORS, register_aggregator


def nz_keep(x, rng, gap=4.0, share=0.1):
    k, d = x.shape
    cols = rng.choice(d, size=max(1, int(share * d)), replace=False)
    s = np.sign(x[:, cols])
    nz = np.maximum((s != 0).sum(1), 1)
    feats = np.stack([(s > 0).sum(1) / nz, (s < 0).sum(1) / nz, (s == 0).mean(1)], axis=1)
    keep = np.ones(k, bool)
    if k < 4 or np.ptp(feats, axis=0).max() == 0:
        return keep
    labels = kmeans2(feats)
    sizes = np.bincount(labels, minlength=2)
    if 2 * sizes.min() >= k or not _separated(feats, labels, gap):
        return keep
    return labels == sizes.argmax()


RULES["nb_sg_nz"] = lambda x, w, rng: _kept_mean(x, w, nz_keep(x, rng))
if "nb_sg_nz" not in AGGREGATORS:
    register_aggregator("nb_sg_nz", _factory("nb_sg_nz"))

if __name__ == "__main__":
    from fedge.tools.bench.robustness import main
    sys.exit(main(sys.argv[1:]))
