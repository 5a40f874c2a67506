"""synthetic(α, β) against the paper's generative formulas written as a plain loop (Li et al.
2020, FedProx, section 5.1, after Shamir et al. 2014), drawing from the same seeded stream in the
order the module docstring gives: sizes; then per device u_k, B_k, W_k, b_k, v_k, the inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.tools.synthetic import synthetic


def paper(devices, alpha, beta, dim, classes, min_examples, max_examples, seed):
    """[(x, y)] per device, train and held-out rows together. N(m, s2): mean m, variance s2."""
    rng = np.random.default_rng(seed)
    held = max(1, min_examples // 4)
    sizes = [min(max(int(rng.lognormal(3.5, 1.0)), min_examples), max_examples) for _ in range(devices)]
    sigma = [(j + 1) ** -1.2 for j in range(dim)]  # Σ_jj = j^-1.2, j = 1..dim
    out = []
    for n in sizes:
        u, b_k = rng.normal(0.0, math.sqrt(alpha)), rng.normal(0.0, math.sqrt(beta))  # u_k ~ N(0, α), B_k ~ N(0, β)
        w = [[rng.normal(u, 1.0) for _ in range(dim)] for _ in range(classes)]  # W_k ~ N(u_k, 1)
        b = [rng.normal(u, 1.0) for _ in range(classes)]  # b_k ~ N(u_k, 1)
        v = [rng.normal(b_k, 1.0) for _ in range(dim)]  # v_k ~ N(B_k, 1)
        xs, ys = [], []
        for _ in range(n + held):
            x = [float(np.float32(v[j] + rng.normal() * math.sqrt(sigma[j]))) for j in range(dim)]  # x ~ N(v_k, Σ)
            scores = [sum(w[c][j] * x[j] for j in range(dim)) + b[c] for c in range(classes)]
            ys.append(max(range(classes), key=lambda c: scores[c]))  # y = argmax(W_k x + b_k)
            xs.append([x[j] / math.sqrt(beta + 1.0 + sigma[j]) for j in range(dim)])  # then the documented scaling
        out.append((np.array(xs), np.array(ys), n))
    return out


@pytest.mark.parametrize("alpha,beta,seed", [(0.7, 0.2, 0), (0.0, 1.5, 1), (2.0, 0.0, 2)])
def test_synthetic_is_the_papers_generator(alpha, beta, seed):
    data = synthetic(8, alpha, beta, dim=5, classes=4, min_examples=8, max_examples=40, seed=seed)
    want = paper(8, alpha, beta, 5, 4, 8, 40, seed)
    assert [len(c.y_train) for c in data.clients] == [n for _, _, n in want]
    assert max(n for _, _, n in want) == 40  # the cap was reached, not only the floor
    for client, (x, y, _) in zip(data.clients, want):
        np.testing.assert_array_equal(np.concatenate([client.y_train, client.y_test]), y)
        np.testing.assert_allclose(np.concatenate([client.x_train, client.x_test]), x, rtol=2e-6, atol=1e-7)
        assert len(client.y_test) == 2  # 8 // 4 held out


def test_min_examples_equal_to_max_examples_gives_every_device_that_size():
    data = synthetic(5, 0.5, 0.5, min_examples=20, max_examples=20, seed=0)
    assert [len(c.y_train) for c in data.clients] == [20] * 5
