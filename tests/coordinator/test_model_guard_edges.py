"""The coordinator's model guard, evaluation and admission at their documented edges
(mutation6-training audit): the guard-set ratio exactly at guard_max_loss_ratio, a non-finite
strategy state that a passing guard set must not wave through, the current model's guard-set
loss scored again for each new version, cross-entropy of large finite logits against scipy;
the evaluation's every_rounds, devices = 0, its deadline exactly, a report for another model
version; a device's reported loss and norm at their limits."""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import log_softmax

from fedge.coordinator.admission import replayed, reported_loss, reported_norm
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import StaleEval, StoreCorrupt
from fedge.coordinator.evaluation import EvalConfig, Evaluations
from fedge.coordinator.guard import HOLDOUT_REGRESSED, NON_FINITE_MODEL, commit_fault, holdout_fault, mean_cross_entropy
from fedge.coordinator.holdout import HoldoutCheck, checked_set
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.coordinator.store import StoredUpdate
from fedge.coordinator.update_fits import largest_update_bytes
from fedge.coordinator.validation import RoundContext, bytes_digest
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec, EvalReport
from fedge.edge_runtime.kernel.update_codec import dense_fp32_bytes, encode_dense
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model


def test_a_candidate_exactly_at_the_ratio_is_committed():
    assert holdout_fault(2.0, 3.0, 1.5) is None  # "over max_ratio times": equal passes
    assert holdout_fault(2.0, np.nextafter(3.0, 4.0), 1.5).startswith(HOLDOUT_REGRESSED)


def test_a_non_finite_strategy_state_is_refused_even_when_the_guard_set_passes():
    finite = {"w": np.ones(3, np.float32)}
    candidate = SimpleNamespace(params=finite, extra={"momentum": {"w": np.array([0.0, np.inf, 0.0], np.float32)}})
    current = SimpleNamespace(version=4, params=finite, extra={})
    passing = SimpleNamespace(fault=lambda version, cur, cand: None)
    fault = commit_fault(current, candidate, passing)
    assert fault is not None and fault.startswith(NON_FINITE_MODEL) and "momentum w" in fault


def test_cross_entropy_of_large_finite_logits_matches_scipy():
    logits = np.array([[1000.0, 0.0, -5.0], [3.0, 800.0, 1.0]])
    labels = np.array([1, 1])
    expected = -np.mean(log_softmax(logits, axis=1)[np.arange(2), labels])
    assert mean_cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    return build_tiny_model(tmp_path_factory.mktemp("art"))


class _Scored(HoldoutCheck):
    """HoldoutCheck without onnxruntime: a model's guard-set loss is its "loss" entry; counts calls."""

    def __init__(self, max_ratio):
        self.max_ratio, self._scored, self.calls = max_ratio, None, []

    def loss(self, shared):
        self.calls.append(float(shared["loss"][0]))
        return float(shared["loss"][0])


def test_the_current_models_loss_is_scored_again_for_each_version():
    check, model = _Scored(1.5), lambda x: {"loss": np.array([x])}
    assert check.fault(1, model(1.0), model(1.4)) is None
    assert check.fault(1, model(1.0), model(1.45)) is None and check.calls == [1.0, 1.4, 1.45]  # v1 scored once
    assert check.fault(2, model(2.0), model(2.9)) is None  # 1.5 x v2's 2.0, not v1's 1.0
    assert check.calls[-2:] == [2.0, 2.9]


def test_a_guard_set_whose_x_and_y_differ_in_length_is_a_config_error(tiny, tmp_path):
    art, manifest, _ = tiny
    path = tmp_path / "guard.npz"
    np.savez(path, x=np.zeros((5, FEATURES), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(ConfigError, match="same, non-zero length"):
        HoldoutCheck(art, manifest, path, 1.5)


@pytest.mark.parametrize("bad", ["x of one number", "y of one number", "not an npz", "missing", "a folder"])
def test_a_guard_set_that_cannot_be_read_or_holds_0_d_arrays_is_a_config_error(tiny, tmp_path, bad):
    """Was TypeError (len() of a 0-d array) or whatever np.load raised, out of the coordinator's start."""
    art, manifest, _ = tiny
    path = tmp_path / "guard.npz"
    if bad == "x of one number":
        np.savez(path, x=np.float32(1), y=np.zeros(1, np.int64))
    elif bad == "y of one number":
        np.savez(path, x=np.zeros((1, FEATURES), np.float32), y=np.int64(1))
    elif bad == "not an npz":
        path.write_bytes(b"not a zip")
    elif bad == "a folder":
        path.mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"guard_set {path}:")):
        HoldoutCheck(art, manifest, path, 1.5)


class _Outbound:
    def __init__(self):
        self.sent = []

    def encode(self, message):
        return message.eval_id.encode()

    def send(self, topic, payload):
        self.sent.append(topic)


def _evaluations(**config):
    closed = []
    ev = Evaluations(EvalConfig(**config), _Outbound(), SimpleNamespace(add_evaluation=lambda r, s: None),
                     SimpleNamespace(closed=closed.append), "m", seed=7, max_examples=100)
    return ev, closed


PARAMS = {"w": np.zeros(2, np.float32)}
FLEET = [f"dev{i}" for i in range(5)]


def test_every_rounds_asks_only_after_every_nth_version():
    ev, _ = _evaluations(every_rounds=2, devices=0)
    ev.after_commit(3, 3, PARAMS, FLEET, now=0.0)
    assert ev.run is None and ev.outbound.sent == []
    ev.after_commit(4, 4, PARAMS, FLEET, now=0.0)
    assert ev.run is not None and sorted(ev.run.asked) == FLEET  # devices = 0: every eligible device


def test_the_evaluation_closes_at_exactly_its_deadline():
    ev, closed = _evaluations(every_rounds=1, devices=2, deadline_s=30.0)
    ev.after_commit(1, 1, PARAMS, FLEET, now=100.0)
    assert len(ev.run.asked) == 2
    assert ev.tick(np.nextafter(130.0, 0.0)) is None
    record = ev.tick(130.0)
    assert record is not None and closed == [record] and not record.complete and record.asked == 2


def test_a_report_for_another_model_version_answers_nothing():
    ev, _ = _evaluations(every_rounds=1, devices=0)
    ev.after_commit(1, 5, PARAMS, FLEET, now=0.0)
    eval_id = ev.run.asked["dev0"]
    stale = ev.on_report(EvalReport("dev0", eval_id, 4, 10, True, 0.5, 0.5), "dev0", 10, now=1.0)
    assert isinstance(stale, StaleEval) and ev.run.reports == {}
    assert ev.on_report(EvalReport("dev0", eval_id, 5, 10, True, 0.5, 0.5), "dev0", 10, now=1.0) is None


def test_a_devices_reported_loss_and_norm_at_their_limits():
    assert reported_loss({"loss": 0.0}) == 0.0 and reported_loss({"loss": np.nextafter(1e12, 0)}) is not None
    assert reported_loss({"loss": 1e12}) is None  # "1e12 or more" is left out (README)
    assert reported_norm({"norm": 0.0}) == 0.0  # a zero delta's norm is a norm
    assert reported_norm({"norm": -1e-300}) is None and reported_norm({"norm": True}) is None


@pytest.mark.parametrize("bad", ["label past the classes", "negative label", "fractional label", "other width",
                                 "nan in x", "labels in rows"])
def test_a_guard_set_the_model_cannot_score_is_refused_at_start(tiny, tmp_path, bad):
    """Each was opened before: the first two raised IndexError at the first commit or read -1 as
    the last class, 1.7 was read as class 1, another width failed in onnxruntime at the first
    commit, NaN made every model's loss inf (every round abandoned as holdout_regressed)."""
    art, manifest, _ = tiny
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, 10)
    x, y = {"label past the classes": (x, np.r_[y[:9], CLASSES]), "negative label": (x, np.r_[y[:9], -1]),
            "fractional label": (x, np.full(10, 1.7)), "other width": (x[:, :-1], y),
            "nan in x": (np.where(np.eye(10, FEATURES, dtype=bool), np.nan, x), y),
            "labels in rows": (x, np.zeros((10, 2), np.int64))}[bad]
    np.savez(tmp_path / "guard.npz", x=x, y=y)
    with pytest.raises(ConfigError, match="guard_set"):
        HoldoutCheck(art, manifest, tmp_path / "guard.npz", 1.5)


def test_a_column_of_labels_scores_as_the_same_labels_in_a_row(tiny, tmp_path):
    """Oracle: the 1-D labels. An (n, 1) y indexed the logits as an (n, n) grid before."""
    art, manifest, runtime = tiny
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, 10)
    np.savez(tmp_path / "row.npz", x=x, y=y)
    np.savez(tmp_path / "column.npz", x=x, y=y[:, None])
    shared = runtime.initial("shared")
    row = HoldoutCheck(art, manifest, tmp_path / "row.npz", 1.5).loss(shared)
    assert HoldoutCheck(art, manifest, tmp_path / "column.npz", 1.5).loss(shared) == pytest.approx(row, rel=1e-12)


def test_a_secure_rounds_estimate_holds_one_word_per_parameter():
    """Under secure aggregation a device sends every coordinate as a uint32 in the field (the size
    of dense fp32) whatever the compression; 8-bit quantization alone measures a quarter of it."""
    shapes = {"fc.weight": (64, 30), "fc.bias": (64,)}
    secure = CoordinatorConfig(aggregator="mean", weighting="equal", compression=CompressionSpec(quant_bits=8),
                               secure_aggregation=SecAggConfig(enabled=True, clip_range=1.0))
    assert largest_update_bytes(shapes, secure, False) > dense_fp32_bytes(shapes)
    plain = dataclasses.replace(secure, secure_aggregation=SecAggConfig())
    assert largest_update_bytes(shapes, plain, False) < dense_fp32_bytes(shapes)


SHAPES = {"w": (2, 3)}
CTX = RoundContext(4, "m", 2, {"a": "ta"}, SHAPES, norm_bound=10.0)


def test_the_replay_refuses_changed_bytes_and_keeps_the_reported_norm():
    payload = encode_dense({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    kept = StoredUpdate(0, "a", "u1", bytes_digest(payload), 7, payload, reported_norm=2.5)
    assert replayed(kept, CTX).reported_norm == 2.5  # adaptive clipping's bit survives the restart
    rotten = encode_dense({"w": np.arange(1, 7, dtype=np.float32).reshape(2, 3)})  # same shape, other values
    with pytest.raises(StoreCorrupt, match="no longer has the digest"):
        replayed(dataclasses.replace(kept, payload=rotten), CTX)


def test_a_guard_set_in_another_layout_is_refused_as_the_devices_refuse_theirs():
    """The devices' rule (ModelRuntime.check_input): the right size per example in another layout is
    read as garbage, so channels-last images for a channels-first model are refused; flat examples
    and size-1 axes fit, and come back in the model's input shape."""
    manifest = SimpleNamespace(spec={"num_classes": 3}, input_shape=(3, 4, 4))
    y = np.arange(6) % 3
    with pytest.raises(ConfigError, match="laid out otherwise"):
        checked_set("g.npz", np.zeros((6, 4, 4, 3), np.float32), y, manifest)
    pixels = (np.arange(6 * 48) % 256).astype(np.uint8)
    for fits in ((6, 3, 4, 4), (6, 48), (6, 1, 3, 4, 4)):
        x, labels = checked_set("g.npz", pixels.reshape(fits), y, manifest)
        assert x.shape == (6, 3, 4, 4) and labels.dtype == np.int64
        np.testing.assert_array_equal(x.ravel(), pixels.astype(np.float32) / np.float32(255))  # as devices read uint8
