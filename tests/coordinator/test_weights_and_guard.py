"""Bounded weights and the model guard.

* A device's weight is its claimed example count capped at max_examples, or 1 with equal
  weighting, checked against the textbook weighted mean with those weights; a restart
  replays the stored round with the same weights.
* An 8-bit frame with a valid scale of 3e38 and code 127 decodes cleanly to inf: the
  coordinator's finite check (validation.py) is what refuses it.
* The guard: an aggregate that overflows is never committed; the round is abandoned with
  the guard's reason and the model stays as it was.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pytest

from fedge.coordinator.guard import NON_FINITE_MODEL, model_fault
from fedge.coordinator.store import RoundStore
from fedge.coordinator.weights import update_weight
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.compress import CompressedTensor, decompress_update
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_tensors
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _weighted_oracle(old, updates, weights):
    """old + sum_i w_i delta_i / sum_i w_i in float64, from the bytes on the wire."""
    out = {}
    for name, value in old.items():
        acc = sum(w * decompress_update(decode_tensors(u.payload))[name].astype(np.float64)
                  for u, w in zip(updates, weights))
        out[name] = value.astype(np.float64) + acc / sum(weights)
    return out


def test_update_weight_by_hand():
    assert update_weight(7, 100) == 7.0
    assert update_weight(MAX_EXAMPLES, 100) == 100.0
    assert update_weight(MAX_EXAMPLES, 0) == float(MAX_EXAMPLES)  # 0: no cap
    assert update_weight(5, 100, equal=True) == update_weight(10**6, 100, equal=True) == 1.0
    with pytest.raises(ValueError):
        update_weight(0, 100)


def _round(model, tmp_path, sizes, **config):
    fleet = make_fleet(model, tmp_path, clients_per_round=len(sizes), min_reports=len(sizes), **config)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate(sizes)]
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    return fleet, devices


@pytest.mark.parametrize("weighting, cap, weights", [
    ("examples", 100, (7, 100, 30)),  # the liar counts as 100, not 4 billion
    ("examples", MAX_EXAMPLES, (7, MAX_EXAMPLES, 30)),  # no cap in practice: the plain claims
    ("equal", 100, (1, 1, 1)),
])
def test_a_liar_weighs_at_most_the_cap(model, tmp_path, weighting, cap, weights, caplog):
    sizes = (7, MAX_EXAMPLES, 30)
    fleet, devices = _round(model, tmp_path, sizes, weighting=weighting, max_examples=cap,
                            store=RoundStore(tmp_path / "state.db"))
    c = fleet.coordinator
    old = copy_params(c.state.params)
    rng = np.random.default_rng(3)
    shapes = {k: v.shape for k, v in old.items()}
    updates = [d.update(random_delta(shapes, rng)) for d in devices]
    for d, u in zip(devices[:2], updates[:2]):
        d.send(encode_message(u))
    fleet.drain()
    capped = weighting == "examples" and cap < MAX_EXAMPLES  # the claim over the cap is named, once
    assert c.metrics.registry.get_sample_value("fedge_claims_capped_total") == int(capped)
    assert (f"claims {MAX_EXAMPLES} examples; weighted as max_examples = {cap}" in caplog.text) == capped
    # Restart with two updates stored: the replay must weigh them as the live path did.
    c = fleet.restart(RoundStore(tmp_path / "state.db"))
    devices[2].send(encode_message(updates[2]))
    fleet.drain()
    record = c.tick()
    assert record is not None and record.committed and record.reports == 3
    assert_params(c.state.params, _weighted_oracle(old, updates, weights))


def _int8_frame(shapes: dict, name: str, scale: float, code: int) -> bytes:
    """A valid 8-bit update frame: every value 0 but one, `code` in tensor `name`, times `scale`."""
    tensors = []
    for n in sorted(shapes):
        codes = np.zeros(int(np.prod(shapes[n])), np.int8)
        if n == name:
            codes[0] = code
        tensors.append(CompressedTensor(n, tuple(shapes[n]), 8, scale if n == name else 1.0, None, codes))
    return encode_tensors(tensors)


def test_an_int8_frame_that_decodes_to_inf_is_refused_as_non_finite(model, tmp_path):
    fleet, (a, b) = _round(model, tmp_path, (5, 6))
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    name = sorted(shapes)[0]
    frame = _int8_frame(shapes, name, 3e38, 127)
    with np.errstate(over="ignore"):
        decoded = decompress_update(decode_tensors(frame, expected=shapes))  # the decoder finds nothing wrong
    assert math.isinf(decoded[name].flat[0]) and struct.pack("<f", 3e38) in frame
    a.send(encode_message(dataclasses.replace(a.update(random_delta(shapes, np.random.default_rng(0))),
                                              payload=frame)))
    fleet.drain()
    assert c.rejections == {"non_finite": 1}
    assert a.acks() == [(False, "non_finite")]


def test_model_fault_names_the_tensor():
    ok = {"w": np.ones(3, np.float32)}
    assert model_fault(ok, {"momentum": {"w": np.zeros(3)}}) is None
    assert model_fault({"w": np.array([1.0, np.inf], np.float32)}) == f"{NON_FINITE_MODEL}: params w holds NaN or Inf"
    assert "momentum w" in model_fault(ok, {"momentum": {"w": np.array([np.nan])}})


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the guard names it; numpy once printed an overflow too
def test_an_aggregate_that_overflows_is_not_committed(model, tmp_path):
    """Each update is finite (3e38 fits a float32), and so is the model; their sum is not."""
    store = RoundStore(tmp_path / "state.db")
    fleet, (a, b) = _round(model, tmp_path, (5, 6), store=store)
    c = fleet.coordinator
    big = {k: np.full(v.shape, 3e38, np.float32) for k, v in c.state.params.items()}
    c.state = type(c.state)(c.state.version, big, c.state.extra)  # a model already near the float32 edge
    for d in (a, b):
        d.send(encode_message(d.update(big)))
    fleet.drain()
    assert a.acks() == [(True, "")] and b.acks() == [(True, "")]
    record = c.tick()
    assert record is not None and not record.committed
    assert record.why.startswith(NON_FINITE_MODEL), record.why
    assert c.state.version == 0 and all(np.all(v == 3e38) for v in c.state.params.values())
    assert store.load_state().version == 0
    assert c.round is None and c.begin_round()  # the next round goes on from the model it had


def test_guard_set_refuses_a_finite_model_that_does_much_worse(model, tmp_path):
    """With a guard set, a round whose new model's loss on it is over guard_max_loss_ratio x the
    current one's is abandoned as holdout_regressed; a sane round commits. Losses are checked
    against the device's own predict path and a plain cross-entropy."""
    from fedge.coordinator.guard import HOLDOUT_REGRESSED
    from fedge.edge_runtime.trainer.portable import PortableBackend
    from tests.tiny_model import CLASSES, FEATURES

    art, manifest, runtime = model
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, size=60)
    np.savez(tmp_path / "guard.npz", x=x, y=y)
    fleet, (a, b) = _round(model, tmp_path, (5, 6), artifacts_dir=str(art), guard_set=str(tmp_path / "guard.npz"),
                           guard_max_loss_ratio=1.5)
    c = fleet.coordinator
    reference = PortableBackend(art, manifest, "sgd")

    def loss(shared):  # independent of coordinator/holdout.py: the device's predict, a plain loop
        logits = reference.predict({**shared, **runtime.initial("personal")}, x)["global"].astype(np.float64)
        return float(np.mean([np.logaddexp.reduce(row) - row[label] for row, label in zip(logits, y)]))

    shapes = {k: v.shape for k, v in c.state.params.items()}
    for d in (a, b):
        d.send(encode_message(d.update(random_delta(shapes, rng, scale=0.01))))
    fleet.drain()
    first = c.tick()
    assert first.committed and c.state.version == 1
    assert c.holdout.loss(c.state.params) == pytest.approx(loss(c.state.params), rel=1e-5)

    kept = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    wreck = {k: np.full(s, 50.0, np.float32) * np.sign(rng.normal(size=s)).astype(np.float32)
             for k, s in shapes.items()}
    for d in (a, b):
        d.send(encode_message(d.update(wreck)))
    fleet.drain()
    candidate = {k: kept[k] + wreck[k] for k in kept}
    assert loss(candidate) > 1.5 * loss(kept)  # the premise: this model is much worse, and finite
    second = c.tick()
    assert not second.committed and second.why.startswith(HOLDOUT_REGRESSED), second.why
    assert c.state.version == 1
    assert_params(c.state.params, kept)


def test_guard_config_is_checked():
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.edge_runtime.kernel.errors import ConfigError

    with pytest.raises(ConfigError):
        CoordinatorConfig(guard_max_loss_ratio=0.9)


def test_guard_set_loss_of_outputs_that_overflowed_is_inf_without_a_warning():
    """Logits that overflowed (inf, or NaN from inf - inf) score the worst loss there is, and the
    holdout check refuses that candidate; numpy's RuntimeWarning once went to the coordinator's
    log on the way (inf - inf). Finite logits: a plain loop of -log softmax[label]."""
    import warnings

    from fedge.coordinator.guard import HOLDOUT_REGRESSED, holdout_fault, mean_cross_entropy

    logits = np.array([[1.0, 2.0, -1.0], [0.5, 0.5, 3.0]])
    labels = np.array([1, 0])
    plain = np.mean([np.logaddexp.reduce(row) - row[k] for row, k in zip(logits, labels)])
    assert mean_cross_entropy(logits, labels) == pytest.approx(plain, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bad in (np.inf, -np.inf, np.nan):
            worse = logits.copy()
            worse[1, 2] = bad
            assert mean_cross_entropy(worse, labels) == np.inf
    assert holdout_fault(1.0, np.inf, 1.5).startswith(HOLDOUT_REGRESSED)
