"""Numbers a coordinator may send, each within its field's range, that overflow the device's
own arithmetic, and kept state that no longer fits the model a task names: the device answers
(a Decline that says why, or an update from fresh state), and its poll raises nothing.

lr = 5e-324 (a subnormal, and > 0 as TaskHyper asks) in a SCAFFOLD task made the control
update's scale 1 / (K lr) inf, and inf * 0 a NaN: the compressor's ValueError left the
device's poll, and the task was never answered."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import Diverged
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.local_training import scaffold_control_delta
from tests.edge_runtime.one_device import TickingClock, one_device, reply_to
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _scaffold_task(model, task_id: str, lr: float) -> TrainTask:
    _, manifest, runtime = model
    shared = runtime.initial("shared")
    zeros = encode_dense({k: np.zeros_like(v) for k, v in shared.items()})
    return TrainTask(1, task_id, "devA", manifest.model_id, 1, encode_dense(shared),
                     TaskHyper(epochs=1, batch_size=8, lr=lr), CompressionSpec(quant_bits=32), correction=zeros)


def test_a_scaffold_task_whose_control_update_overflows_is_declined(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=TickingClock())
    reply = reply_to(agent, coord, _scaffold_task(model, "t1", 5e-324))
    assert isinstance(reply, Decline), reply
    assert (reply.reason, reply.stage) == ("diverged", "during")
    assert "control update" in reply.detail and "not finite" in reply.detail
    assert len(agent.pending) == 0
    # The device goes on: an honest SCAFFOLD task trains and yields a finite update.
    assert isinstance(reply_to(agent, coord, _scaffold_task(model, "t2", 0.05)), Update)


@pytest.mark.parametrize(("lr", "delta"), [(5e-324, 0.0), (1e-300, 1e-8)], ids=["inf*0", "overflow"])
def test_the_control_update_refuses_a_scale_fp32_cannot_hold(lr, delta):
    """Oracle: Δc_i = -c + (x - y_i) / (K lr), by hand; past fp32's range (or NaN) it is Diverged."""
    c = {"w": np.zeros(3, np.float32)}
    moved = {"w": np.full(3, -delta, np.float32)}
    hyper = TaskHyper(lr=lr, optimizer="sgd")
    with pytest.raises(Diverged, match="not finite in fp32"):
        scaffold_control_delta(c, moved, 2, hyper)
    ok = scaffold_control_delta(c, moved, 2, TaskHyper(lr=0.5, optimizer="sgd"))
    np.testing.assert_allclose(ok["w"], np.full(3, np.float32(delta) / (2 * 0.5)), rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_kept_optimizer_state_of_other_shapes_is_started_fresh(model, tmp_path, optimizer):
    """A task that keeps the optimizer's state reads it back from the store, where it may not fit
    the model (a model fetched again under its id with other shapes, or a damaged file): only
    its names were checked, and ORT's InvalidArgument left the device's poll, the task never
    answered. Oracle: the same device with no kept state sends the same update."""
    from fedge.edge_runtime.kernel.compress import decompress_update
    from fedge.edge_runtime.kernel.update_codec import decode_tensors
    from fedge.edge_runtime.store import DeviceStore

    _, manifest, runtime = model
    hyper = TaskHyper(epochs=1, batch_size=8, lr=0.05, optimizer=optimizer, keep_optimizer_state=True)
    replies = []
    for damage in ("other shapes", "none kept"):
        agent, coord = one_device(model, tmp_path / damage, clock=TickingClock())
        task = lambda task_id: TrainTask(1, task_id, "devA", manifest.model_id, 1,  # noqa: E731
                                         encode_dense(runtime.initial("shared")), hyper, CompressionSpec(quant_bits=32))
        assert isinstance(reply_to(agent, coord, task("t1")), Update)
        store = DeviceStore(tmp_path / damage / "devA", manifest.model_id)
        kept = store.load_opt_state()
        store.save_opt_state({k: np.zeros(3, np.float32) for k in kept} if damage == "other shapes" else None)
        replies.append(reply_to(agent, coord, task("t2")))
    assert all(isinstance(r, Update) for r in replies), replies
    ours, oracle = (decompress_update(decode_tensors(r.payload)) for r in replies)
    assert all(np.array_equal(ours[k], oracle[k]) for k in oracle)
