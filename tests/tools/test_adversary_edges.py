"""adversary.py at its documented edges (the mutation8-adversary audit): who attacks, the image
trigger's default side, sign_flip's factor, ALIE's minority, min-sum's bound and the step's
refusals. Oracles: the README's rules and the papers' formulas written out as plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm as scipy_norm

from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES
from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.simulate.adversary import (
    AttackSpec,
    attack_step,
    choose_attackers,
    claimed_examples,
    malicious_delta,
    trigger_for,
)
from fedge.tools.simulate.attacks import AttackError, Collusion


def test_the_attackers_are_round_of_the_fraction_not_its_floor():
    """round(fraction x N) devices: 0.3 of 9 is 2.7, three attackers (int() would give two)."""
    ids = [f"d{i}" for i in range(9)]
    for seed in range(3):
        assert len(choose_attackers(ids, 0.3, seed)) == round(0.3 * 9) == 3


def test_an_image_trigger_s_default_side_is_a_seventh_of_the_height():
    """README: a square of side max(2, height / 7) in the bottom-right corner: 4 on 28 x 28."""
    c = ClientData("d0", np.zeros((2, 784), np.float32), np.zeros(2, np.int64), np.zeros((1, 784), np.float32),
                   np.zeros(1, np.int64))
    data = FederatedDataset("img", (c,), 10, (784,), (1, 28, 28))
    side = max(2, 28 // 7)
    corner = []
    for row in range(28 - side, 28):
        for col in range(28 - side, 28):
            corner.append(row * 28 + col)
    trig = trigger_for(data, AttackSpec("backdoor"))
    assert trig.indices == tuple(corner) and len(corner) == 16 and trig.value == 1.0


def test_sign_flip_sends_minus_its_scale_times_the_delta():
    """--attack-scale is sign_flip's factor (README's option table): -3 x delta, not -delta."""
    x = np.array([1.0, -2.0, 0.5])
    got = malicious_delta(AttackSpec("sign_flip", scale=3.0), Collusion(), 10, 1.0, x, 1, "a", None)
    np.testing.assert_array_equal(got, [-3.0, 6.0, -1.5])


def _z_max(n: int, m: int) -> float:
    """Baruch et al. 2019: s = floor(n / 2 + 1) - m supporters; z_max with Phi(z) = (n - s) / n."""
    s = math.floor(n / 2 + 1) - m
    return float(scipy_norm.ppf((n - s) / n))


def test_alie_counts_at_most_a_minority_of_an_even_round_as_colluders():
    """Five colluders in a round of n = 10 are half, not a minority: z_max is the largest
    minority's, m = 4 (s = 2), not m = 5 (s = 1)."""
    col = Collusion()
    rows = np.random.default_rng(3).normal(size=(5, 4))
    for i, r in enumerate(rows):
        out = malicious_delta(AttackSpec("alie"), col, 10, 1.0, r, 7, f"a{i}", None)
    mean = [sum(r[j] for r in rows) / 5 for j in range(4)]
    std = [math.sqrt(sum((r[j] - mean[j]) ** 2 for r in rows) / 5) for j in range(4)]
    want = [mean[j] - _z_max(10, 4) * std[j] for j in range(4)]
    np.testing.assert_allclose(out, want, rtol=1e-9)
    assert not np.allclose(out, [mean[j] - _z_max(10, 5) * std[j] for j in range(4)])


def _sq(a, b) -> float:
    return sum((float(u) - float(v)) ** 2 for u, v in zip(a, b))


def test_min_sum_keeps_the_sum_of_squared_distances_within_the_benign_s_largest():
    """Shejwalkar & Houmansadr 2021, min-sum: mal = mean + gamma p (p = -std) with
    sum_i ||mal - x_i||^2 <= max_i sum_j ||x_i - x_j||^2, gamma as large as that allows."""
    col = Collusion()
    rows = np.random.default_rng(5).normal(size=(4, 6))
    for i, r in enumerate(rows):
        out = malicious_delta(AttackSpec("min_sum"), col, 10, 1.0, r, 2, f"a{i}", None)
    mean = rows.mean(axis=0)
    p = -rows.std(axis=0)
    gamma = float(np.dot(out - mean, p) / np.dot(p, p))
    np.testing.assert_allclose(out, mean + gamma * p, atol=1e-12)  # on the ray

    def total(g: float) -> float:
        return sum(_sq(mean + g * p, x) for x in rows)

    limit = max(sum(_sq(xi, xj) for xj in rows) for xi in rows)
    assert total(gamma) <= limit + 1e-9 < total(gamma + 1e-3)


def test_the_step_refuses_a_server_lr_of_zero_for_every_update_attack():
    """The step's own check names n and eta up front, whatever the attack (sign_flip never
    reaches scale_replace's)."""
    for name in ("sign_flip", "scale", "nan"):
        for eta in (0.0, -1.0, float("nan")):
            with pytest.raises(AttackError, match="server lr eta > 0"):
                attack_step(AttackSpec(name), Collusion(), 10, eta)


def test_poison_and_huge_weight_claim_at_most_what_the_codec_takes():
    """poison claims the codec's largest count; huge_weight its examples x 10^6, capped there
    (10,000 x 10^6 is past 2^32 - 1: uncapped, the Update would be refused as malformed)."""
    assert claimed_examples(AttackSpec("poison"), 40) == MAX_EXAMPLES == 2**32 - 1
    assert claimed_examples(AttackSpec("huge_weight"), 4_000) == 4_000_000_000
    assert claimed_examples(AttackSpec("huge_weight"), 10_000) == MAX_EXAMPLES
