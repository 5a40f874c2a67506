"""Edges of the export's LoRA merge and of the initial parameters that the mutation5-models audit
found untested (benchmarks/results/2026-12-06-mutation5-models). Oracle: numpy on the same
weights, W + (alpha / rank) * A @ B, written out here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedge.models.export import dense_tail
from fedge.models.params import init_params, param_infos
from fedge.models.spec import mlp_spec


def _spec():
    return mlp_spec(10, 3, hidden=(16, 8), modes=("lora", "personal"), lora_rank=2, lora_alpha=6.0)


def test_the_lora_product_is_scaled_by_alpha_over_rank():
    spec = _spec()
    rng = np.random.default_rng(7)
    values = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in init_params(spec).items()}
    w = values["fc1.weight"].astype(np.float64) + 3.0 * (values["fc1.lora_a"].astype(np.float64)
                                                         @ values["fc1.lora_b"].astype(np.float64))
    assert spec.lora_scale == 3.0  # 6 / 2
    merged = dense_tail(spec, values, "personal")
    np.testing.assert_allclose(merged[0][0], w.astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(merged[1][0], values["fc2.weight"])  # a personal layer: as it is


def test_an_adapter_starts_as_a_no_op():
    """B starts at zero, so the merged weight at the start is the base weight, exactly."""
    spec = _spec()
    values = init_params(spec)
    assert not values["fc1.lora_b"].any() and values["fc1.lora_a"].any()
    np.testing.assert_array_equal(dense_tail(spec, values, "personal")[0][0], values["fc1.weight"])


def test_a_is_frozen_unless_the_spec_trains_it():
    roles = lambda spec: {p.name: p.role for p in param_infos(spec)}  # noqa: E731
    assert roles(replace(_spec(), lora_train_a=False))["fc1.lora_a"] == "frozen"
    assert roles(replace(_spec(), lora_train_a=True))["fc1.lora_a"] == "shared"
    assert roles(_spec())["fc1.lora_b"] == "shared"
