"""The private head refit before a committed model is scored (edge_runtime/head_refit.py).

Oracles: the step-count rule as a plain loop over the rounds a device sits out; the refit itself
as softmax regression on the committed body's features, written out in numpy
(test_personalize._oracle)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime, _stable_int
from fedge.edge_runtime.head_refit import REFIT_HORIZON, REFIT_SALT, HeadFit, refit_steps
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from tests.edge_runtime.test_personalize import HYPER, _build, _device, _oracle, _perturbed


def _owed_by_loop(task_steps: int, missed: int, horizon: int) -> int:
    """What the rule owes after `missed` rounds, counted out: each round sat out earns
    task_steps / horizon steps, for at most `horizon` rounds, and a started step counts whole."""
    earned_units = 0  # in 1/horizon-ths of a step
    for _ in range(min(missed, horizon)):
        earned_units += task_steps
    steps = 0
    while steps * horizon < earned_units:
        steps += 1
    return steps


@pytest.mark.parametrize("horizon", [1, 2, 3, 5])
def test_refit_steps_follow_the_rounds_sat_out_since_the_task(horizon):
    """A device evaluated after every commit: none when its own task went into the model, a
    share per round sat out, never more than one task's worth in all until its next task."""
    for task_steps, base in itertools.product([0, 1, 6, 7, 23], [0, 4]):
        fit, total = HeadFit(HYPER, task_steps, base), 0
        assert refit_steps(fit, base) == 0 and refit_steps(fit, base - 1 if base else 0) == 0  # older models
        for version in range(base + 1, base + 2 + 2 * horizon):
            steps = refit_steps(fit, version, horizon)
            total += steps
            fit = dataclasses.replace(fit, refit=fit.refit + steps)
            assert total == _owed_by_loop(task_steps, version - base - 1, horizon), (task_steps, base, version)
        assert total == task_steps
        # evaluated only once, long after: the whole task's steps at once
        assert refit_steps(HeadFit(HYPER, task_steps, base), base + 1 + 10 * horizon, horizon) == task_steps


def _task(shared, manifest, version: int) -> TrainTask:
    return TrainTask(round_id=version + 1, task_id=f"t{version}", device_id="dev-a", model_id=manifest.model_id,
                     model_version=version, params=encode_dense(shared), hyper=HYPER, seed=41,
                     compression=CompressionSpec(quant_bits=32, error_feedback=False))


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dual"), "dual")


def test_an_evaluation_refits_the_private_head_as_far_as_the_rounds_sat_out_call_for(dual, tmp_path, caplog):
    """A task from version 4 commits into version 5: scoring 5 refits nothing (the head trained
    beside that round's body); scoring the version REFIT_HORIZON rounds later refits the head to
    that body (frozen) by the task's steps, keeps it and scores it; later versions refit no more."""
    art, manifest, runtime = dual
    device = _device(dual, tmp_path)
    shared = runtime.initial("shared")
    update = device.handle_task(_task(shared, manifest, 4))
    assert isinstance(update, Update), update
    store = DeviceStore(tmp_path / "dev-a", manifest.model_id)
    trained = store.load_personal()
    committed = _perturbed(runtime, np.random.default_rng(8))  # the fleet's mean: another body than the device's
    committed = {k: committed[k] for k in shared}

    device.evaluate(manifest.model_id, committed, version=5)  # its own round: nothing owed
    device.evaluate(manifest.model_id, committed)  # no version (a direct score): nothing refit
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], trained["head_personal.weight"])

    version = 5 + REFIT_HORIZON
    scores = device.evaluate(manifest.model_id, committed, version=version)

    net = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64)
    params = {k: v.astype(np.float64) for k, v in {**committed, **trained}.items()}
    feats = net.forward(params, runtime.embed(device.data.x_train).astype(np.float64))[0]
    steps = int(update.metrics["steps"])
    assert steps == 6  # one epoch of 45 examples in batches of 8
    rng = np.random.default_rng([_stable_int("dev-a"), device.seed, version, REFIT_SALT])
    w, b = _oracle(feats, device.data.y_train, trained["head_personal.weight"], trained["head_personal.bias"], steps,
                   HYPER.batch_size, HYPER.lr, HYPER.momentum, rng)
    refit = store.load_personal()
    np.testing.assert_allclose(refit["head_personal.weight"], w, atol=2e-5)
    np.testing.assert_allclose(refit["head_personal.bias"], b, atol=2e-5)
    assert not np.allclose(refit["head_personal.weight"], trained["head_personal.weight"], atol=1e-3)
    test_feats = net.forward(params, runtime.embed(device.data.x_test).astype(np.float64))[0]
    assert scores.accuracy_personal == pytest.approx(np.mean(np.argmax(test_feats @ w + b, axis=1)
                                                             == device.data.y_test))
    # A task's worth is refit once until the next task: later versions score the head as kept.
    device.evaluate(manifest.model_id, shared, version=version + 3)
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], refit["head_personal.weight"])

    # A body the head cannot be fit to (not finite): the kept head is scored, and stays, with a word.
    device.handle_task(_task(shared, manifest, 20))
    kept = store.load_personal()
    broken = {k: np.full_like(v, np.nan) for k, v in committed.items()}
    device.evaluate(manifest.model_id, broken, strict=False, version=21 + REFIT_HORIZON)
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], kept["head_personal.weight"])
    assert "personal head not refit" in caplog.text
    # A device restarted since its task does not know how its head was trained: it scores it as kept.
    restarted = DeviceRuntime("dev-a", device.data, {manifest.model_id: art}, tmp_path)
    restarted.evaluate(manifest.model_id, committed, version=30)
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], kept["head_personal.weight"])
