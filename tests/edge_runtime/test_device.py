"""DeviceRuntime and DeviceAgent: declines, aborts, durable local state, pending updates.
The task state machine's own tests are in test_task.py."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import numpy as np
import pytest

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ArtifactError, DatasetError, ManifestMismatch
from fedge.edge_runtime.kernel.protocol import Ack, CompressionSpec, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.task import TaskState
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(46, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=46)
    return LocalData(x[:40], y[:40], x[40:], y[40:])


def _runtime(model, data, root, eligibility=None, device_id="devA") -> DeviceRuntime:
    art, manifest, _ = model
    return DeviceRuntime(device_id, data, {manifest.model_id: art}, root, eligibility=eligibility, seed=3)


def _task(model, round_id=1, shared=None, model_id=None, device_id="devA", **changes) -> TrainTask:
    _, manifest, runtime = model
    fields = dict(
        round_id=round_id,
        task_id=f"task-{round_id}",
        device_id=device_id,
        model_id=model_id or manifest.model_id,
        model_version=round_id - 1,
        params=encode_dense(runtime.initial("shared") if shared is None else shared),
        hyper=TaskHyper(epochs=2, batch_size=8, lr=0.1, optimizer="sgd", momentum=0.9),
        compression=CompressionSpec(quant_bits=8),  # lossy: leaves an error-feedback residual
        seed=100 + round_id,
    )
    return TrainTask(**{**fields, **changes})


def _store(model, root, device_id="devA") -> DeviceStore:
    return DeviceStore(root / device_id, model[1].model_id)


def _flips_after(calls: int, cause: str):
    """An eligibility check that says yes `calls` times, then `cause`; counts its calls."""
    counter = itertools.count(1)
    seen = []

    def check():
        n = next(counter)
        seen.append(n)
        return None if n <= calls else cause

    return check, seen


# ---------------------------------------------------------------- declines and aborts


def test_ineligible_device_declines_before_training(model, data, tmp_path):
    rt = _runtime(model, data, tmp_path, eligibility=lambda: "metered_link")
    reply = rt.handle_task(_task(model))
    assert reply == Decline("devA", 1, "task-1", "metered_link", "not eligible", "before")
    assert _store(model, tmp_path).load_personal() is None
    assert not rt.check_in().eligible and rt.check_in().reason == "metered_link"


def test_eligibility_flip_mid_training_aborts_and_saves_nothing(model, data, tmp_path):
    # 40 examples, batch 8, 2 epochs = 10 steps. One check before the task, one before every step:
    # yes 4 times = the task starts and 3 steps run, then the 5th check aborts.
    check, seen = _flips_after(4, "thermal")
    reply = _runtime(model, data, tmp_path, eligibility=check).handle_task(_task(model))
    assert isinstance(reply, Decline)
    assert (reply.reason, reply.stage) == ("aborted:thermal", "during")
    assert "3 steps" in reply.detail
    assert seen == [1, 2, 3, 4, 5]  # stopped at the first refusal
    store = _store(model, tmp_path)
    assert store.load_personal() is None and store.load_opt_state() is None and store.load_residual() is None


def test_same_task_without_the_flip_trains_all_steps(model, data, tmp_path):
    """Control for the abort test: the flip really lands mid-training."""
    check, seen = _flips_after(10**6, "thermal")
    reply = _runtime(model, data, tmp_path, eligibility=check).handle_task(_task(model))
    assert isinstance(reply, Update)
    assert reply.metrics["steps"] == 10.0 and len(seen) == 11


def test_unknown_model_declines_with_the_artifact_reason(model, data, tmp_path):
    reply = _runtime(model, data, tmp_path).handle_task(_task(model, model_id="no-such-model"))
    assert isinstance(reply, Decline)
    assert reply.reason == ArtifactError.reason and reply.stage == "before"
    assert "no-such-model" in reply.detail


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_label_outside_the_models_classes_is_declined_as_bad_dataset(model, data, tmp_path, split):
    """A label of CLASSES + 89 once ended the task in an ONNX Runtime GatherElements error: no
    decline, and the round waited for its deadline (a helper's device probe)."""
    y_train, y_test = data.y_train.copy(), data.y_test.copy()
    (y_train if split == "train" else y_test)[0] = CLASSES + 89
    bad = LocalData(data.x_train, y_train, data.x_test, y_test)
    rt = _runtime(model, bad, tmp_path)
    if split == "train":
        reply = rt.handle_task(_task(model))
        assert isinstance(reply, Decline) and reply.reason == "bad_dataset", reply
        assert f"label {CLASSES + 89} is outside" in reply.detail
    else:
        _, manifest, runtime = model
        with pytest.raises(DatasetError, match=f"y_test: label {CLASSES + 89}"):
            rt.evaluate(manifest.model_id, runtime.initial("shared"))


@pytest.mark.parametrize("how", ["wrong_shape", "missing", "extra"])
def test_global_params_that_do_not_fit_the_manifest_are_declined(model, data, tmp_path, how):
    shared = model[2].initial("shared")
    if how == "wrong_shape":
        shared["head_global.weight"] = shared["head_global.weight"].T.copy()
    elif how == "missing":
        del shared["fc1.lora_a"]
    else:
        shared["head_personal.bias"] = np.zeros(CLASSES, np.float32)  # a personal param sent as shared
    reply = _runtime(model, data, tmp_path).handle_task(_task(model, shared=shared))
    assert isinstance(reply, Decline)
    assert reply.reason == ManifestMismatch.reason == "manifest_mismatch"
    assert _store(model, tmp_path).load_personal() is None


# ---------------------------------------------------------------- durable local state


def _nonzero(arrays) -> bool:
    return any(np.abs(v).max() > 0 for v in arrays.values())


def _differ(a, b) -> bool:
    return set(a) != set(b) or any(not np.array_equal(a[k], b[k]) for k in a)


def test_local_state_persists_and_a_restarted_runtime_picks_it_up(model, data, tmp_path):
    _, manifest, runtime = model
    init_personal = runtime.initial("personal")
    shared_names = {p.name for p in manifest.by_role("shared")}
    root = tmp_path / "state"

    keep = dataclasses.replace(_task(model).hyper, keep_optimizer_state=True)
    u1 = _runtime(model, data, root).handle_task(_task(model, round_id=1, hyper=keep))
    assert isinstance(u1, Update)
    store = _store(model, root)
    p1, opt1, res1 = store.load_personal(), store.load_opt_state(), store.load_residual()
    assert set(p1) == set(init_personal) and _differ(p1, init_personal)
    assert opt1 and all(k.endswith(".momentum_buffer") for k in opt1) and _nonzero(opt1)
    assert set(res1) == shared_names and _nonzero(res1)  # 8-bit quantization left a residual
    assert store.load_meta() == {"last_round": 1, "last_task": "task-1"}

    # Snapshots of the state after task 1: complete, and each with one piece missing.
    snapshots = {}
    for missing in ("none", "personal", "opt_state", "residual"):
        dst = tmp_path / f"snap-{missing}"
        shutil.copytree(root, dst)
        if missing != "none":
            _store(model, dst).save_state({missing: None})
        snapshots[missing] = dst

    shared2 = {k: v + decompress_update(decode_tensors(u1.payload))[k] for k, v in runtime.initial("shared").items()}
    task2 = _task(model, round_id=2, shared=shared2, hyper=keep)
    u2 = _runtime(model, data, root).handle_task(task2)  # a new runtime: the device restarted
    assert isinstance(u2, Update)
    p2 = _store(model, root).load_personal()
    assert _differ(p2, init_personal) and _differ(p2, p1)

    def replay(missing):
        reply = _runtime(model, data, snapshots[missing]).handle_task(task2)
        return reply, _store(model, snapshots[missing]).load_personal()

    # Oracle: the restart is a pure function of what was saved after task 1.
    same, same_p = replay("none")
    assert same.payload == u2.payload
    for k in p2:
        np.testing.assert_array_equal(same_p[k], p2[k])
    # Each saved piece is used: without it task 2 comes out differently.
    _, no_personal = replay("personal")
    assert _differ(no_personal, p2)
    _, no_momentum = replay("opt_state")
    assert _differ(no_momentum, p2)
    no_residual, _ = replay("residual")
    assert no_residual.payload != u2.payload


def test_by_default_every_task_starts_from_a_fresh_optimizer_state(model, data, tmp_path):
    """Stale momentum on disk changes nothing unless the task asks to keep it, and none is kept."""
    root = tmp_path / "state"
    assert not _task(model).hyper.keep_optimizer_state
    _runtime(model, data, root).handle_task(_task(model, round_id=1))
    store = _store(model, root)
    assert store.load_opt_state() is None
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    shapes = {p.name: p.shape for p in model[1].trainable}
    stale_state = {f"{k}.momentum_buffer": np.full(s, 0.5, np.float32) for k, s in shapes.items()}
    store.save_opt_state(stale_state)
    fresh = _runtime(model, data, clean).handle_task(_task(model, round_id=2))
    stale = _runtime(model, data, root).handle_task(_task(model, round_id=2))
    assert fresh.payload == stale.payload
    assert store.load_opt_state() is None  # and the stale file is gone
    store.save_opt_state(stale_state)
    keep = dataclasses.replace(_task(model).hyper, keep_optimizer_state=True)
    carried = _runtime(model, data, root).handle_task(_task(model, round_id=3, hyper=keep))
    again = _runtime(model, data, clean).handle_task(_task(model, round_id=3, hyper=keep))
    assert carried.payload != again.payload  # with keep, the stale buffer is used


def test_what_the_device_sends_stays_within_the_clip_bound_with_a_residual(model, data, tmp_path):
    """The residual is added before clipping, so a sparse round's leftover cannot push the
    next update past the bound (it did when the device clipped first, then added it)."""
    _, _, runtime = model
    clip = 0.05
    lossy = CompressionSpec(quant_bits=4, topk_fraction=0.2, clip_norm=clip)
    shared = runtime.initial("shared")
    device = _runtime(model, data, tmp_path)
    for round_id in (1, 2, 3):
        update = device.handle_task(_task(model, round_id=round_id, shared=shared, compression=lossy))
        sent = decompress_update(decode_tensors(update.payload))
        norm = float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in sent.values())))
        assert norm <= clip
        shared = {k: v + sent[k] for k, v in shared.items()}
    residual = _store(model, tmp_path).load_residual()
    assert _nonzero(residual)  # a residual was carried, so the order mattered


# ---------------------------------------------------------------- the agent


def _agent(model, data, root, eligibility=None):
    broker = InMemoryBroker()
    coord = broker.connect("coordinator")
    coord.subscribe(device_topic("devA", "update"))
    agent = DeviceAgent(_runtime(model, data, root, eligibility=eligibility), broker.connect("devA"))
    agent.start()
    return agent, coord


def _received(transport) -> list[bytes]:
    out = []
    while (msg := transport.receive(0.0)) is not None:
        out.append(msg.payload)
    return out


def _pending(agent) -> dict[str, bytes]:
    return {p.update_id: p.payload for p in agent.pending.items()}


def _ack(update: Update, accepted=True, **changes) -> bytes:
    ack = Ack(update.device_id, update.round_id, update.task_id, update.update_id, accepted)
    return encode_message(Ack(**{**ack.__dict__, **changes}))


def test_update_stays_pending_until_acked_and_is_republished(model, data, tmp_path):
    agent, coord = _agent(model, data, tmp_path)
    task = _task(model)
    coord.publish(device_topic("devA", "task"), encode_message(task))
    while agent.poll(0.0):
        pass
    (sent,) = _received(coord)
    update = decode_message(sent)
    assert isinstance(update, Update)
    assert _pending(agent) == {update.update_id: sent}
    assert agent.tasks[task.task_id] == TaskState.UPLOADING

    assert agent.republish_pending() == 1
    assert _received(coord) == [sent]  # byte-identical: same update_id, so the coordinator can dedup

    # The same task again (a redelivery, or the coordinator resending after a loss) is not
    # trained twice: the device answers with the update it already has.
    coord.publish(device_topic("devA", "task"), encode_message(task))
    agent.poll(0.0)
    assert _received(coord) == [sent]

    # Acks for another update or another device do not clear it.
    coord.publish(device_topic("devA", "ack"), _ack(update, update_id="someone-else"))
    coord.publish(device_topic("devA", "ack"), _ack(update, device_id="devB"))
    while agent.poll(0.0):
        pass
    assert list(_pending(agent)) == [update.update_id]
    assert agent.republish_pending() == 1 and _received(coord) == [sent]

    coord.publish(device_topic("devA", "ack"), _ack(update))
    agent.poll(0.0)
    assert _pending(agent) == {}
    assert agent.tasks[task.task_id] == TaskState.ACKNOWLEDGED
    assert agent.republish_pending() == 0 and _received(coord) == []


def test_rejected_update_is_dropped_not_resent(model, data, tmp_path):
    agent, coord = _agent(model, data, tmp_path)
    task = _task(model)
    coord.publish(device_topic("devA", "task"), encode_message(task))
    agent.poll(0.0)
    update = decode_message(_received(coord)[0])
    coord.publish(device_topic("devA", "ack"), _ack(update, accepted=False, reason="bad_shape"))
    agent.poll(0.0)
    assert _pending(agent) == {}
    assert agent.tasks[task.task_id] == TaskState.REJECTED


def test_decline_is_published_and_not_kept_pending(model, data, tmp_path):
    agent, coord = _agent(model, data, tmp_path, eligibility=lambda: "battery_low")
    task = _task(model)
    coord.publish(device_topic("devA", "task"), encode_message(task))
    agent.poll(0.0)
    (reply,) = [decode_message(p) for p in _received(coord)]
    assert isinstance(reply, Decline) and reply.reason == "battery_low"
    assert _pending(agent) == {} and agent.republish_pending() == 0
    assert agent.tasks[task.task_id] == TaskState.DECLINED


def test_pending_update_survives_a_device_restart(model, data, tmp_path):
    agent, coord = _agent(model, data, tmp_path)
    coord.publish(device_topic("devA", "task"), encode_message(_task(model)))
    agent.poll(0.0)
    (sent,) = _received(coord)
    agent.transport.close()  # the device loses power before the Ack arrives

    again, coord2 = _agent(model, data, tmp_path)  # same state directory
    assert _pending(again) == {decode_message(sent).update_id: sent}
    assert sent in _received(coord2)  # resent on start, byte-identical


def test_a_task_past_its_deadline_stops_between_steps_and_saves_nothing(model, data, tmp_path):
    """The agent's deadline check is asked between steps, after the eligibility check."""
    calls = itertools.count(1)
    reply = _runtime(model, data, tmp_path).handle_task(
        _task(model), deadline_check=lambda: "deadline" if next(calls) > 6 else None)
    assert isinstance(reply, Decline)
    assert (reply.reason, reply.stage) == ("aborted:deadline", "during")
    assert "6 steps" in reply.detail
    assert _store(model, tmp_path).load_personal() is None


def test_the_abort_reason_is_the_first_check_that_fires(model, data, tmp_path):
    check, _ = _flips_after(3, "battery_low")
    reply = _runtime(model, data, tmp_path, eligibility=check).handle_task(_task(model),
                                                                           deadline_check=lambda: "deadline")
    assert reply.reason == "aborted:deadline"  # the battery is still fine at the first step
    check, _ = _flips_after(1, "battery_low")
    reply = _runtime(model, data, tmp_path / "b", eligibility=check).handle_task(_task(model),
                                                                                 deadline_check=lambda: "deadline")
    assert reply.reason == "aborted:battery_low"
