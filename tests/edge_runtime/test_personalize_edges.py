"""Head tuning, the post-processing chain's clip report and the device's scores at edges the
other tests left open (mutation6-training audit): a task's FedProx mu does not pull a tuned
head back; clip reports the norm it saw, clipping or not; cross-entropy of large finite logits
against scipy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.special import log_softmax

from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.personalize import tune_head
from fedge.edge_runtime.postprocess import Delta, TaskContext, clip
from fedge.edge_runtime.scores import cross_entropy
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from tests.edge_runtime.test_personalize import HYPER, _build, _oracle, _perturbed, _separable


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dual"), "dual")


def test_a_tasks_prox_term_does_not_pull_the_tuned_head_back(dual):
    """tune_head drops mu (its comment: the head is not pulled back): with mu = 5 the global
    head still follows plain head-only SGD, the oracle of test_personalize.py."""
    art, manifest, runtime = dual
    params = _perturbed(runtime, np.random.default_rng(0))
    x, y = _separable(29, 1)
    z = runtime.embed(x)
    hyper = dataclasses.replace(HYPER, mu=5.0)
    tuned = tune_head(make_backend("numpy", art, manifest, "sgd"), params, "global", z, y, hyper, 6,
                      np.random.default_rng(5))
    feats = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64).forward(
        {k: v.astype(np.float64) for k, v in params.items()}, z.astype(np.float64))[0]
    w, b = _oracle(feats, y, params["head_global.weight"], params["head_global.bias"], 6, hyper.batch_size,
                   hyper.lr, hyper.momentum, np.random.default_rng(5))
    np.testing.assert_allclose(tuned["head_global.weight"], w, atol=2e-5)
    np.testing.assert_allclose(tuned["head_global.bias"], b, atol=2e-5)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0, 100.0])
def test_clip_reports_the_norm_it_saw(clip_norm):
    """norm_before_clip is adaptive clipping's report (Update.metrics["norm"]): the delta's global
    L2 norm before the clip, whether or not it clipped, as a plain loop computes it."""
    rng = np.random.default_rng(4)
    tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    out = clip(Delta(tensors), TaskContext(CompressionSpec(clip_norm=clip_norm)), rng)
    naive = math.sqrt(sum(float(v) ** 2 for t in tensors.values() for v in t.ravel()))
    assert out.norm_before_clip == pytest.approx(naive, rel=1e-6)


def test_cross_entropy_of_large_finite_logits_matches_scipy():
    logits = np.array([[1000.0, 0.0, -5.0], [3.0, 800.0, 1.0], [0.5, 0.25, 0.0]])
    y = np.array([1, 1, 2])
    expected = -np.mean(log_softmax(logits, axis=1)[np.arange(3), y])
    assert cross_entropy(logits, y) == pytest.approx(expected, rel=1e-12)
