"""A task whose values the wire refuses (a NaN learning rate, batch size 0, 10**12 steps) was
dropped with a log line, and its round waited for the deadline. An intact frame that names this
device by valid ids is declined with the codec's reason instead; a damaged one, one for another
device, or a bad copy of a task already answered is still only logged."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.secagg.messages import (
    KeyAdvertisement,
    KeyDirectory,
    PeerKeys,
    SecAggSpec,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, reframed
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _task(model, task_id: str) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(5, task_id, DEVICE, manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8), CompressionSpec(quant_bits=32))


def _hyper(**values):
    return lambda body: body["hyper"].update(values)


def _answers(agent, coord, payload: bytes) -> list:
    coord.publish(device_topic(DEVICE, "task"), payload)
    return [m for m in pump(agent, coord) if isinstance(m, (Update, Decline))]


REFUSED = [_hyper(lr=float("nan")), _hyper(lr=float("inf")), _hyper(lr=-1.0), _hyper(lr=1e30), _hyper(batch_size=0),
           _hyper(batch_size=2**40), _hyper(max_steps=10**12), _hyper(epochs=10**7), _hyper(optimizer="lbfgs"),
           lambda body: body.update(deadline_s=float("nan")), lambda body: body.update(surprise=1),
           # a digest no file can have: once awaited until the artifact fetch timed out (120 s)
           lambda body: body.update(manifest_sha256="zz"), lambda body: body.update(round_model_sha256="AB" * 32),
           lambda body: body.update(manifest_sha256="ab" * 31)]


@pytest.mark.parametrize("edit,secure", [(edit, False) for edit in REFUSED] + [(REFUSED[0], True), (REFUSED[4], True)])
def test_a_task_the_wire_refuses_is_declined_by_name(model, tmp_path, edit, secure):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    task = _task(model, "bad")
    if secure:
        frame = reframed(SecAggTask(task, SecAggSpec(), sharing=2), lambda body: edit(body["task"]))
    else:
        frame = reframed(task, edit)
    (decline,) = _answers(agent, coord, frame)
    assert (decline.task_id, decline.round_id, decline.reason, decline.stage) == ("bad", 5, "malformed", "before")
    assert decline.detail.startswith("SecAggTask.task." if secure else "TrainTask")
    if not secure:  # a copy, bad or mended, gets the same answer: the task id was declined
        assert _answers(agent, coord, frame) == [decline] == _answers(agent, coord, encode_message(task))
    (update,) = _answers(agent, coord, encode_message(_task(model, "good")))  # the device goes on
    assert isinstance(update, Update)


def test_frames_that_name_nobody_reliably_are_only_logged(model, tmp_path):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    nan = _hyper(lr=float("nan"))
    trained = _answers(agent, coord, encode_message(_task(model, "t1")))
    assert [type(m) for m in trained] == [Update]
    damaged = bytearray(reframed(_task(model, "t2"), nan))
    damaged[-1] ^= 0xFF  # the checksum
    for frame in (bytes(damaged),
                  reframed(_task(model, "t3"), lambda body: (nan(body), body.update(device_id="devB"))),
                  reframed(_task(model, "t4"), lambda body: (nan(body), body.update(round_id=-1))),
                  reframed(_task(model, "t5"), lambda body: (nan(body), body.update(task_id=7))),
                  reframed(_task(model, "t1"), nan)):  # a bad copy of a task it trained: its Update stands
        assert _answers(agent, coord, frame) == []


@pytest.mark.parametrize("request_, edit", [
    (KeyDirectory(DEVICE, 5, "s1", (DEVICE, "p1"), 1, 1, 0, (PeerKeys("p1", bytes(32), bytes(32), "ab" * 32),)),
     lambda body: body["keys"][0].update(cipher_public=bytes(31))),
    (ShareDelivery(DEVICE, 5, "s1", ()), lambda body: body.update(shares=[{"peer": "p1", "ciphertext": b"x"}])),
    (UnmaskRequest(DEVICE, 5, "s1", (DEVICE,), (), "ab" * 32), lambda body: body.update(model_sha256="AB")),
])
def test_a_secure_stage_the_wire_refuses_is_declined_by_name_each_time(model, tmp_path, request_, edit):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    frame = reframed(request_, edit)
    for _ in range(2):
        (decline,) = _answers(agent, coord, frame)
        assert (decline.task_id, decline.round_id, decline.reason, decline.stage) == ("s1", 5, "malformed", "during")


@pytest.mark.parametrize("stage", ["advertised", "fetching"])
def test_a_bad_copy_of_a_secure_task_the_device_is_in_gets_no_decline(model, tmp_path, stage):
    """A secure round's task is kept by the participant (or, while its model is fetched, by the
    agent), not the task table or the journal, so a refused copy of it was taken for a task never
    seen and declined `malformed` "before": the coordinator was told the device left a round it
    had advertised keys in (or would advertise in once its model came). A bad copy of a plain task
    it trained gets nothing (its Update stands); so does this one, and its session goes on."""
    _, manifest, runtime = model
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    task = TrainTask(5, "s9", DEVICE, manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    if stage == "fetching":  # a model it lacks, with a manifest hash to fetch it by: the task waits for it
        task = dataclasses.replace(task, model_id="elsewhere", manifest_sha256="ab" * 32)
    secure = SecAggTask(task, SecAggSpec(), sharing=2)
    coord.publish(device_topic(DEVICE, "task"), encode_message(secure))
    first = [m for m in pump(agent, coord) if isinstance(m, (KeyAdvertisement, Decline))]
    assert [type(m) for m in first] == ([KeyAdvertisement] if stage == "advertised" else [])
    bad = reframed(secure, lambda body: body["task"]["hyper"].update(lr=float("nan")))
    coord.publish(device_topic(DEVICE, "task"), bad)
    assert [m for m in pump(agent, coord) if isinstance(m, Decline)] == []
    if stage == "advertised":  # the session stands: a good copy is answered with the same keys
        coord.publish(device_topic(DEVICE, "task"), encode_message(secure))
        assert [m for m in pump(agent, coord) if isinstance(m, KeyAdvertisement)] == first
