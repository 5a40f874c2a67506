"""The synthetic(α, β) federated data set (Shamir et al. 2014, as used by FedProx, Li et al. 2020).

Device k draws its own model and its own inputs:

    u_k ~ N(0, α),  W_k ~ N(u_k, 1) (classes x dim),  b_k ~ N(u_k, 1)       α: how much models differ
    B_k ~ N(0, β),  v_k ~ N(B_k, 1) (dim),  x ~ N(v_k, Σ), Σ_jj = j^-1.2     β: how much inputs differ
    y = argmax(W_k x + b_k)

N(m, v) is mean m and variance v, as the paper writes it (the FedProx authors' own
generate_synthetic.py passes α and β to numpy as the standard deviation: the same at 0 and 1,
a spread of 0.5 where this draws 0.71 at 0.5). So α = β = 0 is close to IID and synthetic(1, 1)
strongly non-IID. Each feature is then divided by its population standard deviation,
sqrt(β + 1 + j^-1.2), a constant of the generator (no device's data enters it): raw, the
features reach |12| and local SGD diverges. Labels are drawn before the scaling, so the task is
the same. Sizes are log-normal (a few devices hold much more than most), at least
`min_examples` and at most `max_examples` for training, plus min_examples // 4 held out on
every device (5 at the default 20: a fifth of the smallest device). Pure: numpy, one seeded RNG.
"""

from __future__ import annotations

import numpy as np

from .datasets import ClientData, FederatedDataset


def synthetic(devices: int, alpha: float = 1.0, beta: float = 1.0, *, dim: int = 60, classes: int = 10,
              min_examples: int = 20, max_examples: int = 200, seed: int = 0) -> FederatedDataset:
    if devices < 1 or min_examples < 1 or max_examples < min_examples or alpha < 0 or beta < 0:
        raise ValueError("need devices >= 1, 1 <= min_examples <= max_examples, alpha >= 0, beta >= 0")
    alpha, beta = alpha + 0.0, beta + 0.0  # -0.0 is 0: numpy's normal refuses the scale sqrt(-0.0) = -0.0
    rng = np.random.default_rng(seed)
    held = max(1, min_examples // 4)  # held out per device, besides its training examples
    sizes = np.clip(rng.lognormal(3.5, 1.0, size=devices).astype(int), min_examples, max_examples)
    variance = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    clients = []
    for k, n in enumerate(sizes):
        u, b_mean = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        w = rng.normal(u, 1.0, size=(classes, dim))
        bias = rng.normal(u, 1.0, size=classes)
        v = rng.normal(b_mean, 1.0, size=dim)
        x = (v + rng.normal(size=(n + held, dim)) * np.sqrt(variance)).astype(np.float32)
        y = np.argmax(x @ w.T + bias, axis=1).astype(np.int64)
        x = (x / np.sqrt(beta + 1.0 + variance)).astype(np.float32)
        clients.append(ClientData(f"syn-{k:05d}", x[:n], y[:n], x[n:], y[n:]))
    return FederatedDataset(f"synthetic({alpha:g},{beta:g})", tuple(clients), classes, (dim,), None)
