"""How often the gate at 4 x splits a round of pure noise, by round size k: 2,000 rounds of k
1-D Gaussian feature points each (the dense case, where the zero share is 0 and the + and -
shares sum to 1), 2-means and the gate as coordinator/robust/sign_split.py runs them, a split
counted only when the smaller cluster is under half (the shipped rule). What min_inputs = 4
rests on (README, Robust aggregation, "The gated sign split").

    .venv-test/bin/python benchmarks/results/2026-12-06-sign-split/min_inputs_noise.py
"""

import numpy as np

from fedge.coordinator.robust.sign_split import separated, two_means

for k in range(3, 13):
    split = 0
    for s in range(2000):
        f = np.random.default_rng([k, s]).normal(size=(k, 1))
        labels = two_means(f)
        split += 2 * np.bincount(labels, minlength=2).min() < k and separated(f, labels, 4.0)
    print(f"k = {k:2d}: {split / 2000:.3f} of rounds split")
