"""A non-IID task with one global concept, for `fedge bench async`: Gaussian classes, each
device with its own label mix (Dirichlet) and size (log-normal). Pure: numpy, one seed.

    μ_c ~ N(0, separation² I)                    (classes x dim), shared by every device
    p_k ~ Dirichlet(alpha 1)                     device k's label distribution (label skew)
    n_k ~ LogNormal(3.5, 1), clipped to [min_examples, max_examples]
    y ~ p_k,  x = μ_y + N(0, I)

Unlike synthetic(α, β) (tools/synthetic.py), whose devices each label by their own model so
that one global model stays near chance, a global linear model can learn this task; the
devices still disagree on what their data looks like, which is what makes stale updates hurt.
"""

from __future__ import annotations

import numpy as np

from fedge.tools.datasets import ClientData, FederatedDataset


def label_skew(devices: int, alpha: float = 0.3, *, dim: int = 60, classes: int = 10, separation: float = 0.3,
               min_examples: int = 20, max_examples: int = 200, seed: int = 0) -> FederatedDataset:
    if devices < 1 or alpha <= 0 or not 1 <= min_examples <= max_examples:
        raise ValueError("need devices >= 1, alpha > 0 and 1 <= min_examples <= max_examples")
    rng = np.random.default_rng([seed, 1717])
    means = rng.normal(0.0, separation, size=(classes, dim))
    held = max(1, min_examples // 4)  # held out per device, as synthetic() does
    sizes = np.clip(rng.lognormal(3.5, 1.0, size=devices).astype(int), min_examples, max_examples)
    clients = []
    for k, n in enumerate(sizes):
        y = rng.choice(classes, size=n + held, p=rng.dirichlet(np.full(classes, alpha)))
        x = (means[y] + rng.normal(size=(n + held, dim))).astype(np.float32)
        clients.append(ClientData(f"skew-{k:05d}", x[:n], y[:n].astype(np.int64), x[n:], y[n:].astype(np.int64)))
    return FederatedDataset(f"label-skew(Dirichlet {alpha:g})", tuple(clients), classes, (dim,), None)
