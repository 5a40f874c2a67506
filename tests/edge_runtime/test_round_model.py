"""The round's model published once: split/join, hash and id checks, and the device's waits."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import RoundModelError
from fedge.edge_runtime.kernel.protocol import ModelPart, RoundModel, TrainTask
from fedge.edge_runtime.kernel.round_model import ModelAssembly, ModelWaits, fill_task, split_round_model

MODEL = RoundModel("mlp", 7, 12, params=np.random.default_rng(0).bytes(5000), correction=b"\x01" * 40)


def _task(task_id="t1", sha="", **changes) -> TrainTask:
    fields = dict(round_id=12, task_id=task_id, device_id="d", model_id="mlp", model_version=7, params=b"",
                  round_model_sha256=sha)
    return TrainTask(**{**fields, **changes})


def test_split_then_join_in_any_order_gives_the_model_back():
    sha, parts = split_round_model(MODEL, 700)
    assert sha == hashlib.sha256(encode_message(MODEL)).hexdigest()
    assert len(parts) == -(-len(encode_message(MODEL)) // 700) > 1
    assert {p.count for p in parts} == {len(parts)} and all(len(p.data) <= 700 for p in parts)
    assembly = ModelAssembly(sha, 1 << 20)
    order = np.random.default_rng(1).permutation(len(parts))
    results = [assembly.accept(parts[i]) for i in order]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == MODEL


def test_parts_of_another_model_and_repeats_are_ignored():
    sha, parts = split_round_model(MODEL, 1000)
    other_sha, other = split_round_model(dataclasses.replace(MODEL, round_id=13), 1000)
    assembly = ModelAssembly(sha, 1 << 20)
    assert all(assembly.accept(p) is None for p in other)  # an earlier round's retained parts
    assert assembly.accept(parts[0]) is None and assembly.accept(parts[0]) is None
    assert [assembly.accept(p) for p in parts[1:]][-1] == MODEL


@pytest.mark.parametrize("tamper, message", [
    (lambda parts: [dataclasses.replace(parts[0], data=b"x" + parts[0].data[1:])] + parts[1:], "do not hash"),
    (lambda parts: [dataclasses.replace(parts[0], count=len(parts) + 1)] + parts[1:], "contradicts"),
    (lambda parts: [dataclasses.replace(parts[0], index=len(parts))] + parts[1:], "contradicts"),
])
def test_a_bad_part_is_refused(tamper, message):
    sha, parts = split_round_model(MODEL, 1000)
    assembly = ModelAssembly(sha, 1 << 20)
    with pytest.raises(RoundModelError, match=message):
        for part in tamper(parts):
            assembly.accept(part)


def test_a_model_bigger_than_the_device_accepts_is_refused():
    sha, parts = split_round_model(MODEL, 1000)
    assembly = ModelAssembly(sha, 3000)
    with pytest.raises(RoundModelError, match="exceeds 3000 bytes"):
        for part in parts:
            assembly.accept(part)


def test_parts_that_hash_right_but_hold_another_message_are_refused():
    blob = encode_message(_task())
    sha = hashlib.sha256(blob).hexdigest()
    with pytest.raises(RoundModelError, match="not a RoundModel"):
        ModelAssembly(sha, 1 << 20).accept(ModelPart(sha, 0, 1, blob))


def test_fill_task_puts_the_params_inline_and_checks_the_ids():
    filled = fill_task(_task(sha="ab"), MODEL)
    assert (filled.params, filled.correction, filled.round_model_sha256) == (MODEL.params, MODEL.correction, "")
    for wrong in ({"round_id": 11}, {"model_version": 6}, {"model_id": "cnn"}):
        with pytest.raises(RoundModelError, match="does not belong"):
            fill_task(_task(sha="ab", **wrong), MODEL)


def test_waits_resolve_from_parts_then_from_the_cached_model():
    sha, parts = split_round_model(MODEL, 2000)
    waits = ModelWaits(1 << 20)
    inline = _task("inline", params=b"p")
    assert waits.resolve(inline, 0.0) is inline  # nothing to wait for
    assert waits.resolve(_task("a", sha), 0.0) is None and waits.resolve(_task("b", sha), 1.0) is None
    assert waits.listening and waits.waiting("a") and not waits.waiting("inline")
    results = [waits.on_part(p) for p in parts]
    ready, refused, _ = results[-1]
    assert [t.task_id for t in ready] == ["a", "b"] and not refused
    assert all(t.params == MODEL.params for t in ready)
    assert not waits.listening and not waits.waiting("a")
    assert waits.resolve(_task("c", sha), 2.0).params == MODEL.params  # a later task of the same round


def test_waits_fall_back_to_inline_once_then_give_up():
    sha, parts = split_round_model(MODEL, 2000)
    waits = ModelWaits(1 << 20)
    waits.resolve(_task("a", sha), 0.0)
    assert waits.overdue(10.0, 15.0) == []
    assert [t.task_id for t in waits.overdue(16.0, 15.0)] == ["a"]
    assert waits.overdue(17.0, 15.0) == []  # asked once
    assert not waits.listening and [t.task_id for t in waits.asked_inline()] == ["a"]
    assert waits.on_part(parts[0]) == ([], [], "")  # parts no longer awaited
    assert [t.task_id for t in waits.expired(200.0, 135.0)] == ["a"]
    assert not waits.waiting("a")


def test_a_bad_part_sends_the_waiting_tasks_inline_and_take_removes_them():
    sha, parts = split_round_model(MODEL, 2000)
    waits = ModelWaits(1 << 20)
    waits.resolve(_task("a", sha), 0.0)
    assert waits.on_part(parts[0]) == ([], [], "")
    ready, refused, why = waits.on_part(dataclasses.replace(parts[1], count=99))
    assert not ready and [t.task_id for t in refused] == ["a"] and "contradicts" in why
    assert waits.take("a") and not waits.take("a") and not waits.waiting("a")


def test_a_task_the_hashed_model_does_not_fit_is_asked_for_inline_not_dropped():
    sha, parts = split_round_model(MODEL, 2000)
    waits = ModelWaits(1 << 20)
    waits.resolve(_task("good", sha), 0.0)
    waits.resolve(_task("other-round", sha, round_id=11), 0.0)  # a coordinator bug: wrong hash in the task
    ready, refused, why = [], [], ""
    for part in parts:
        ready, refused, why = waits.on_part(part)
    assert [t.task_id for t in ready] == ["good"]
    assert [t.task_id for t in refused] == ["other-round"] and "does not belong" in why
    assert [t.task_id for t in waits.asked_inline()] == ["other-round"] and waits.waiting("other-round")
    assert not waits.listening


def test_models_awaited_share_one_byte_budget():
    """A task per round-model hash, each hash's parts up to max_bytes: a device held max_bytes
    of parts per hash a coordinator named (64 MiB each by default)."""
    waits = ModelWaits(1500)
    models = [dataclasses.replace(MODEL, params=bytes([i]) * 900) for i in range(2)]
    (sha_a, parts_a), (sha_b, parts_b) = (split_round_model(m, 800) for m in models)
    waits.resolve(_task("a", sha_a), 0.0)
    waits.resolve(_task("b", sha_b), 0.0)
    assert waits.on_part(parts_a[0]) == ([], [], "")
    ready, refused, why = waits.on_part(parts_b[0])  # 800 + 800 > 1500
    assert not ready and [t.task_id for t in refused] == ["b"] and "over 1500 bytes" in why
    assert waits.held() == 800
    ready, _, _ = waits.on_part(parts_a[1])
    assert [t.task_id for t in ready] == ["a"] and waits.held() == 0


def test_empty_parts_are_refused_and_a_given_up_model_holds_nothing():
    """Parts with no bytes and count 2**63 - 1 passed the byte limit and piled up one per message."""
    sha, parts = split_round_model(MODEL, 2000)
    waits = ModelWaits(1 << 20)
    waits.resolve(_task("a", sha), 0.0)
    assert waits.on_part(parts[0]) == ([], [], "")
    _, refused, why = waits.on_part(ModelPart(sha, 5, 2**63 - 1, b""))
    assert [t.task_id for t in refused] == ["a"] and "no bytes" in why
    assert waits.held() == 0
