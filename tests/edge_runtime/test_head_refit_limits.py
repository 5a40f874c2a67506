"""The refit at an evaluation (head_refit.py) under a task's limits: the abort check and a time
limit, the divergence rule, bad local data, a failed save, the strict score, a frozen body and
the model's contents. In each, the device still answers, and the head it kept stays kept.

Oracles: the kept head's own score (an evaluation with no version refits nothing); a twin device
whose refit is saved; the refit's batch losses written out in numpy (softmax regression on the
committed body's features, as test_personalize._oracle steps)."""

from __future__ import annotations

import dataclasses
import errno

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime, LocalData, _stable_int
from fedge.edge_runtime.evaluation import EvalAnswers, answer_eval
from fedge.edge_runtime.head_refit import REFIT_HORIZON, REFIT_SALT
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.errors import NonFiniteValues
from fedge.edge_runtime.kernel.protocol import EvalTask, Update
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from fedge.tools.simulate.personalization import personalized_spec
from tests.edge_runtime.test_head_refit import _task
from tests.edge_runtime.test_personalize import CLASSES, FEATURES, HYPER, _build, _perturbed, _separable

OWED = 5 + REFIT_HORIZON  # a task from version 4 owes its steps at this version


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dual"), "dual")


def _trained(model, root, abort_check=None, y_train=None):
    """A device after one task from version 4, its store, the committed body it is scored on
    (another than its own), and its personal params as the task left them."""
    art, manifest, runtime = model
    x, y = _separable(60, 0)
    device = DeviceRuntime("dev-a", LocalData(x[:45], y[:45] if y_train is None else y_train, x[45:], y[45:]),
                           {manifest.model_id: art}, root, abort_check=abort_check)
    shared = runtime.initial("shared")
    assert isinstance(device.handle_task(_task(shared, manifest, 4)), Update)
    store = DeviceStore(root / "dev-a", manifest.model_id)
    committed = _perturbed(runtime, np.random.default_rng(8))
    return device, store, {k: committed[k] for k in shared}, store.load_personal()


def _eval(manifest, committed, version=OWED):
    return EvalTask(f"e{version}", "dev-a", manifest.model_id, version, version, encode_dense(committed))


def _unchanged(device, store, manifest, trained, committed):
    """The head as the task left it, on disk and as scored, and nothing counted as refit."""
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], trained["head_personal.weight"])
    assert device.head_fits[(manifest.model_id, device.model(manifest.model_id).state_key)].refit == 0


class Battery:
    """An abort_check that says battery_low from its call number `low_from` on."""

    def __init__(self):
        self.calls, self.low_from = 0, float("inf")

    def __call__(self):
        self.calls += 1
        return "battery_low" if self.calls >= self.low_from else None


def test_the_refit_stops_at_the_devices_abort_check_and_the_old_head_is_scored(dual, tmp_path, caplog):
    """abort_check says battery_low from its third call (the task asked it before its steps
    too): the refit stops, the kept head stays and is scored, and the evaluation is answered."""
    _, manifest, _ = dual
    battery = Battery()
    device, store, committed, trained = _trained(dual, tmp_path, abort_check=battery)
    kept_score = device.evaluate(manifest.model_id, committed, version=None, should_abort=lambda: None)
    battery.low_from = battery.calls + 2
    sent = []
    report = EvalAnswers(device, clock=ManualClock()).answer(_eval(manifest, committed), sent.append)
    assert sent == [report] and report.reason == "" and report.has_personal
    assert report.accuracy_personal == pytest.approx(kept_score.accuracy_personal)
    assert battery.calls == battery.low_from  # asked before each step, stopped at the second
    _unchanged(device, store, manifest, trained, committed)
    assert "battery_low" in caplog.text
    # Direct calls abort too: evaluate's default should_abort is the device's abort_check.
    device.evaluate(manifest.model_id, committed, version=OWED)
    _unchanged(device, store, manifest, trained, committed)


def test_the_refit_stops_at_its_time_limit(dual, tmp_path):
    """Each step takes 10 s on the device's clock and the refit may take 15: it stops, and the
    evaluation answers with the old head's score. With time enough the same refit is kept."""
    _, manifest, _ = dual
    device, store, committed, trained = _trained(dual, tmp_path)
    clock = ManualClock()
    device.abort_check = lambda: clock.advance(10.0)  # the time a step takes, between the checks
    kept_score = device.evaluate(manifest.model_id, committed, version=None)
    stop = EvalAnswers(device, clock=clock, refit_s=15.0).refit_stop()
    report = answer_eval(device, _eval(manifest, committed), stop)
    assert report.reason == "" and report.accuracy_personal == pytest.approx(kept_score.accuracy_personal)
    _unchanged(device, store, manifest, trained, committed)
    answer_eval(device, _eval(manifest, committed), EvalAnswers(device, clock=clock, refit_s=1e6).refit_stop())
    assert device.head_fits[(manifest.model_id, device.model(manifest.model_id).state_key)].refit == 6


def _refit_losses(model, device, committed, personal, version):
    """The refit's batch losses before each step, in numpy: softmax regression with momentum SGD
    on the committed body's features, batches drawn as the refit draws them."""
    art, manifest, runtime = model
    net = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64)
    params = {k: v.astype(np.float64) for k, v in {**committed, **personal}.items()}
    feats = net.forward(params, runtime.embed(device.data.x_train).astype(np.float64))[0]
    y, w, b = device.data.y_train, params["head_personal.weight"], params["head_personal.bias"]
    rng = np.random.default_rng([_stable_int("dev-a"), device.seed, version, REFIT_SALT])
    bw, bb, losses = np.zeros_like(w), np.zeros_like(b), []
    order = rng.permutation(len(y))
    for start in range(0, len(y), HYPER.batch_size):
        idx = order[start:start + HYPER.batch_size]
        logits = feats[idx] @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        losses.append(float(-np.mean(np.log(p[np.arange(len(idx)), y[idx]]))))
        p[np.arange(len(idx)), y[idx]] -= 1.0
        p /= len(idx)
        bw, bb = HYPER.momentum * bw + feats[idx].T @ p, HYPER.momentum * bb + p.sum(axis=0)
        w, b = w - HYPER.lr * bw, b - HYPER.lr * bb
    return losses


def test_a_refit_past_the_tasks_divergence_rule_is_dropped(dual, tmp_path, caplog):
    """A body on which the refit's loss passes divergence_factor times the first (the numpy
    losses say it does): the refit is dropped as a task's would be, the old head scored and kept."""
    _, manifest, runtime = dual
    device, store, _, trained = _trained(dual, tmp_path)
    rng = np.random.default_rng(3)
    committed = {k: (rng.normal(scale=0.6, size=v.shape).astype(np.float32) if "lora" in k else v)
                 for k, v in runtime.initial("shared").items()}
    losses = _refit_losses(dual, device, committed, trained, OWED)
    assert max(losses) > HYPER.divergence_factor * max(losses[0], 1.0), losses  # the rule fires
    kept_score = device.evaluate(manifest.model_id, committed, version=None)
    report = answer_eval(device, _eval(manifest, committed))
    assert report.reason == "" and report.accuracy_personal == pytest.approx(kept_score.accuracy_personal)
    _unchanged(device, store, manifest, trained, committed)
    assert "diverged" in caplog.text


def test_a_refit_that_cannot_be_saved_is_scored_and_tried_again(dual, tmp_path, monkeypatch, caplog):
    """A full disk at the save (a bare OSError): the evaluation answers with the refit head's
    score (a twin device that saved the same refit scores the same), the old head stays on disk,
    and head_fits is not moved on."""
    _, manifest, _ = dual
    twin, _, committed, _ = _trained(dual, tmp_path / "twin")
    expected = answer_eval(twin, _eval(manifest, committed))
    device, store, committed, trained = _trained(dual, tmp_path / "full")

    def full(self, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DeviceStore, "save_personal", full)
    sent = []
    report = EvalAnswers(device).answer(_eval(manifest, committed), sent.append)
    assert sent == [report] and report.reason == ""
    assert report.accuracy_personal == pytest.approx(expected.accuracy_personal)
    assert report.loss_personal == pytest.approx(expected.loss_personal)
    _unchanged(device, store, manifest, trained, committed)
    assert "not saved" in caplog.text


@pytest.mark.parametrize("bad", ["empty", "negative_label"])
def test_bad_local_data_skips_the_refit_and_the_evaluation_is_answered(dual, tmp_path, bad, caplog):
    """No training examples (data swapped through the API), or a label of -1 (which indexes
    the last class): the head is not refit, the kept one is scored, with a word."""
    _, manifest, _ = dual
    device, store, committed, trained = _trained(dual, tmp_path)
    x, y = _separable(60, 0)
    if bad == "empty":
        device.replace_data(LocalData(x[:0], y[:0], x[45:], y[45:]))
    else:
        y_bad = y[:45].copy()
        y_bad[3] = -1
        device.replace_data(LocalData(x[:45], y_bad, x[45:], y[45:]))
    kept_score = device.evaluate(manifest.model_id, committed, version=None)
    report = answer_eval(device, _eval(manifest, committed))
    assert report.reason == "" and report.accuracy_personal == pytest.approx(kept_score.accuracy_personal)
    _unchanged(device, store, manifest, trained, committed)
    assert "personal head not refit" in caplog.text


def test_a_task_with_a_negative_label_is_declined(dual, tmp_path):
    _, manifest, runtime = dual
    x, y = _separable(60, 0)
    y[3] = -1
    device = DeviceRuntime("dev-a", LocalData(x[:45], y[:45], x[45:], y[45:]), {manifest.model_id: dual[0]}, tmp_path)
    decline = device.handle_task(_task(runtime.initial("shared"), manifest, 4))
    assert decline.reason == "bad_dataset" and "negative" in decline.detail


def test_a_strict_score_that_fails_keeps_no_refit(dual, tmp_path):
    """Global logits that are not finite (a test input of 1e38: the training split is sound, so
    the refit itself goes through): the strict score raises, and the refit made before it is
    neither saved nor counted."""
    _, manifest, _ = dual
    device, store, committed, trained = _trained(dual, tmp_path)
    x_test = device.data.x_test.copy()
    x_test[0] = 1e38
    device.replace_data(dataclasses.replace(device.data, x_test=x_test))
    with pytest.raises(NonFiniteValues):
        device.evaluate(manifest.model_id, committed, version=OWED)
    _unchanged(device, store, manifest, trained, committed)
    device.evaluate(manifest.model_id, committed, strict=False, version=OWED)  # the same refit, not strict: kept
    assert device.head_fits[(manifest.model_id, device.model(manifest.model_id).state_key)].refit == 6


def test_a_head_mode_model_is_not_refit(tmp_path):
    """`head` mode shares only head_global: the body the private head reads never moves."""
    base = mlp_spec(FEATURES, CLASSES, hidden=(8,), modes=("lora",), lora_rank=2, head="dual", name="tiny")
    manifest = build_artifacts(personalized_spec(base, "head"), tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    assert all(p.name.startswith("head_global.") for p in manifest.by_role("shared"))
    device, store, _, trained = _trained((tmp_path / "art", manifest, runtime), tmp_path / "state")
    committed = {k: v + 1.0 for k, v in runtime.initial("shared").items()}  # the fleet moved head_global only
    device.evaluate(manifest.model_id, committed, version=OWED + 3)
    _unchanged(device, store, manifest, trained, committed)


def test_a_fit_recorded_for_other_model_contents_is_not_applied(dual, tmp_path):
    """head_fits is keyed by the model's contents (state_key), not its id alone: after the
    contents under the id change and personalize() keeps a head for them, the old contents'
    task does not drive a refit of that head."""
    _, manifest, _ = dual
    device, _, committed, _ = _trained(dual, tmp_path)
    model = device.model(manifest.model_id)
    model.state_key = "other contents"  # what a re-fetch of changed contents under the same id gives
    device.personalize(manifest.model_id, committed, 3, HYPER)
    tuned = device.store(model).load_personal()
    device.evaluate(manifest.model_id, committed, version=OWED)
    np.testing.assert_array_equal(device.store(model).load_personal()["head_personal.weight"],
                                  tuned["head_personal.weight"])
