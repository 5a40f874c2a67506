"""admit(): one verdict per update, against a view of the coordinator built by hand."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedge.coordinator.admission import Accepted, AdmissionView, Rejected, admit, replayed
from fedge.coordinator.store import StoredUpdate
from fedge.coordinator.validation import RoundContext, payload_digest
from fedge.edge_runtime.kernel.protocol import Update
from fedge.edge_runtime.kernel.update_codec import encode_dense

SHAPES = {"w": (2, 3), "b": (3,)}
CTX = RoundContext(4, "m", 2, {"a": "ta", "b": "tb"}, SHAPES, norm_bound=10.0)
DELTA = {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 10, "b": np.ones(3, np.float32)}


def _update(device="a", **changes) -> Update:
    fields = dict(device_id=device, round_id=4, task_id=f"t{device}", update_id="u1", model_id="m", base_version=2,
                  num_examples=7, payload=encode_dense(DELTA))
    return Update(**{**fields, **changes})


def _view(ctx=CTX, seen=None, expects=lambda d: True, closed=None) -> AdmissionView:
    return AdmissionView(ctx, seen or {}, expects, lambda *key: (closed or {}).get(key))


def test_accepted_carries_the_dense_delta_and_the_digest():
    update = _update()
    got = admit(update, "a", _view())
    assert isinstance(got, Accepted) and (got.device_id, got.update_id, got.num_examples) == ("a", "u1", 7)
    assert got.digest == payload_digest(update) and got.control is None
    assert all(np.array_equal(got.delta[k], DELTA[k]) for k in DELTA)
    # The restart replay decodes the stored bytes with the same function, to the same arrays.
    again = replayed(StoredUpdate(0, "a", "u1", got.digest, 7, update.payload), CTX)
    assert dataclasses.astuple(again)[:4] == dataclasses.astuple(got)[:4]
    assert all(again.delta[k].tobytes() == got.delta[k].tobytes() for k in DELTA)


def test_each_refusal_has_its_reason():
    update = _update()
    cases = [
        (admit(update, "a", _view(ctx=None)), "stale_round"),  # no round open
        (admit(update, "b", _view()), "stale_round"),  # on another device's topic
        (admit(_update(task_id="old"), "a", _view()), "stale_round"),
        (admit(update, "a", _view(expects=lambda d: False)), "stale_round"),  # the machine is done with it
        (admit(update, "a", _view(seen={("a", 4, "u1"): payload_digest(update)})), "duplicate"),
        (admit(update, "a", _view(seen={("a", 4, "u1"): "other"})), "conflicting_duplicate"),
        (admit(_update(base_version=1), "a", _view()), "wrong_model"),
        (admit(_update(payload=encode_dense({k: v * 100 for k, v in DELTA.items()})), "a", _view()), "norm_bound"),
    ]
    for verdict, reason in cases:
        assert isinstance(verdict, Rejected) and verdict.reason == reason, (verdict, reason)


def test_a_stale_update_counted_in_a_closed_round_is_a_duplicate_only_for_its_own_device():
    update = _update(round_id=3)
    closed = {("a", 3, "u1"): payload_digest(update)}
    assert admit(update, "a", _view(closed=closed)).reason == "duplicate"
    assert admit(update, "b", _view(closed=closed)).reason == "stale_round"  # not its topic: no ack-worthy verdict
    assert admit(update, "a", _view()).reason == "stale_round"


def test_an_update_the_open_round_no_longer_wants_is_not_called_a_closed_round():
    """An over-selected device's update after its round has the reports it wants was logged as
    'round 4 from a is not open' while round 4 was open (found by the ops walkthrough)."""
    update = _update()
    full = str(admit(update, "a", _view(expects=lambda d: False)).error)
    assert "is open but takes no more from a" in full and "not open" not in full
    assert "is not open" in str(admit(update, "a", _view(ctx=None)).error)
