"""`fedge pretrain` at its documented limits: a proxy split of exactly half the dataset and the
largest epoch count are taken, one more is refused, and weights that came out NaN are refused
before anything is written (found by the mutation7-simfleet audit)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from fedge.edge_runtime.kernel.errors import ConfigError, Diverged  # noqa: E402
from fedge.tools import pretrain as pretrain_module  # noqa: E402
from fedge.tools.pretrain import MAX_EPOCHS, MAX_PROXY_FRACTION, PretrainConfig, pretrain  # noqa: E402


def test_the_largest_proxy_fraction_and_epochs_are_taken_and_one_more_is_refused():
    assert PretrainConfig(out="x", proxy_fraction=MAX_PROXY_FRACTION).proxy_fraction == 0.5
    assert PretrainConfig(out="x", epochs=MAX_EPOCHS).epochs == 1_000_000
    with pytest.raises(ConfigError, match="proxy_fraction"):
        PretrainConfig(out="x", proxy_fraction=np.nextafter(0.5, 1.0))
    with pytest.raises(ConfigError, match="--epochs"):
        PretrainConfig(out="x", epochs=MAX_EPOCHS + 1)


def test_weights_that_came_out_non_finite_are_refused_and_no_model_is_written(tmp_path, monkeypatch):
    """A NaN model written and exit 0 once looked like a pretrained start; the check names --lr."""
    def nan_training(art, x, y, cfg):
        from fedge.edge_runtime.model_runtime import ModelRuntime

        runtime = ModelRuntime(art)
        params = {**runtime.initial("shared"), **runtime.initial("personal")}
        return {k: np.full_like(v, np.nan) for k, v in params.items()}

    monkeypatch.setattr(pretrain_module, "train_central", nan_training)
    with pytest.raises(Diverged, match="--lr"):
        pretrain(PretrainConfig(out=str(tmp_path / "o"), dataset="digits", devices=4, epochs=1))
    assert not (tmp_path / "o" / "pretrained.onnx").exists()
