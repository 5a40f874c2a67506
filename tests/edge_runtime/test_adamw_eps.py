"""hyper.eps = 0 with optimizer = "adamw" is refused by its key. AdamW steps by
m / (sqrt(v) + eps), and a parameter whose gradient is 0 has m = v = 0: with eps = 0 its step is
0 / 0 = NaN. A fresh LoRA factor is such a parameter (B starts at zero, so A's gradient is 0),
so that parameter is NaN after a task's first step. SGD does not read eps.

Oracle: the AdamW step of the numpy reference trainer (trainer/numpy_ref.py) on a zero gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.edge_runtime.trainer.numpy_ref import apply_optimizer


def _adamw_step_on_a_zero_gradient(eps: float) -> np.ndarray:
    zeros = np.zeros(3, np.float32)
    params, state = {"w": np.ones(3, np.float32)}, {"step": np.asarray(0, np.int64), "w.exp_avg": zeros,
                                                     "w.exp_avg_sq": zeros}
    with np.errstate(invalid="ignore"):  # 0 / 0, the point of the test
        apply_optimizer("adamw", params, {"w": zeros}, state, StepHyper(lr=0.01, eps=eps))
    return params["w"]


def test_the_reference_adamw_step_is_nan_on_a_zero_gradient_with_eps_0():
    assert np.isnan(_adamw_step_on_a_zero_gradient(0.0)).all()
    np.testing.assert_array_equal(_adamw_step_on_a_zero_gradient(1e-8), np.ones(3, np.float32))


def test_a_config_with_adamw_and_eps_0_is_refused_by_its_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[hyper]\noptimizer = "adamw"\neps = 0.0\n')
    with pytest.raises(ConfigError, match=r"^c\.toml: hyper\.eps must be > 0 with optimizer 'adamw'"):
        load_coordinator_config(path)
    path.write_text('[hyper]\noptimizer = "sgd"\neps = 0.0\n')
    assert load_coordinator_config(path).hyper.eps == 0.0
