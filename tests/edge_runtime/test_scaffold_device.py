"""SCAFFOLD's client side, against independent references: a device handed c trains with
c - c_i and uploads Δc_i = c_i+ - c_i, where the oracle for option II's
c_i+ = c_i - c + (x - y_i) / (K lr) is the plain mean of the K raw minibatch gradients,
computed by a hand-written SGD loop (local_run._hand_sgd); lossy uploads, rejected uploads,
momentum and AdamW. With them, on the same oracle: the first personal head
(TaskHyper.personal_head_from_global). FedProx's gradient: test_fedprox_gradient.py.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import DURABLE_WRITES
from fedge.edge_runtime.kernel.protocol import Ack, CompressionSpec, Decline, TaskHyper, Update
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.edge_runtime.local_training import scaffold_control_delta
from fedge.edge_runtime.store import DeviceStore
from tests.edge_runtime.local_run import BACKENDS, _data, _hand_sgd, _task, build_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny MLP of tests/tiny_model.py, with ORT training artifacts where they can be built."""
    return build_model(tmp_path_factory.mktemp("artifacts"))


# ------------------------------------------------------------------------------ SCAFFOLD


@pytest.mark.parametrize("backend", BACKENDS)
def test_scaffold_device_trains_with_c_minus_ci_and_uploads_option_two(model, tmp_path, backend):
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend=backend, seed=2)
    rng = np.random.default_rng(9)
    shared = {k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in runtime.initial("shared").items()}
    c = {k: (0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in shared.items()}
    c_i = {k: (0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in shared.items()}
    store = DeviceStore(tmp_path / "dev", manifest.model_id)
    store.save_control(c_i)  # as a previous round left it
    hyper = TaskHyper(epochs=2, batch_size=8, lr=0.1, mu=0.2)
    task = _task(model, shared, hyper, correction=c)

    update = device.handle_task(task)
    assert isinstance(update, Update) and update.control
    delta = decompress_update(decode_tensors(update.payload))
    delta_c = decompress_update(decode_tensors(update.control))

    w, mean_grad, steps = _hand_sgd(model, device, task, shared, runtime.initial("personal"),
                                    {k: c[k].astype(np.float64) - c_i[k] for k in c}, hyper.mu)
    assert steps == 6 and update.metrics["steps"] == 6.0
    for k in shared:
        # Local training used the correction c - c_i (and the prox term).
        np.testing.assert_allclose(delta[k], w[k] - shared[k], atol=2e-6, err_msg=k)
        # Option II, literally: c_i+ = c_i - c + (x - y_i) / (K lr).
        option_two = c_i[k] - c[k] + (shared[k].astype(np.float64) - w[k]) / (steps * hyper.lr)
        np.testing.assert_allclose(c_i[k] + delta_c[k], option_two, atol=2e-5, err_msg=k)
        # ...which for SGD is the mean raw gradient of the local steps (the oracle).
        np.testing.assert_allclose(c_i[k] + delta_c[k], mean_grad[k], atol=2e-5, err_msg=k)
        # The device keeps c_i+ for the next round.
        np.testing.assert_array_equal(store.load_control()[k], c_i[k] + delta_c[k])
    assert update.dense_bytes == 2 * len(encode_dense(shared))  # delta and control, both dense fp32


def test_first_scaffold_round_starts_from_zero_ci_and_plain_tasks_leave_no_control(model, tmp_path):
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend="numpy")
    shared = runtime.initial("shared")
    zero_c = {k: np.zeros_like(v) for k, v in shared.items()}
    hyper = TaskHyper(epochs=1, batch_size=10, lr=0.1)
    plain = device.handle_task(_task(model, shared, hyper, round_id=1))
    assert isinstance(plain, Update) and plain.control == b""
    store = DeviceStore(tmp_path / "dev", manifest.model_id)
    assert store.load_control() is None
    update = device.handle_task(_task(model, shared, hyper, round_id=2, correction=zero_c))
    delta = decompress_update(decode_tensors(update.payload))
    delta_c = decompress_update(decode_tensors(update.control))
    for k in shared:  # c = c_i = 0: Δc_i = -(y_i - x) / (K lr), the mean gradient
        np.testing.assert_allclose(delta_c[k], -delta[k] / (2 * 0.1), rtol=1e-5, atol=1e-7)


def test_option_two_by_hand_with_momentum():
    """Δc_i = -c - Δy / (S lr), numbers worked out on paper: K = 3, β = 0.5 from an empty
    buffer moves 1 + 1.5 + 1.75 = 4.25 plain steps, so S lr = 0.425."""
    c = {"w": np.array([1.0, 2.0], np.float32)}
    delta = {"w": np.array([-0.3, 0.6], np.float32)}
    got = scaffold_control_delta(c, delta, steps=3, hyper=TaskHyper(lr=0.1, momentum=0.5))
    np.testing.assert_allclose(got["w"], [-1 + 0.3 / 0.425, -2 - 0.6 / 0.425], rtol=1e-6)
    plain = scaffold_control_delta(c, delta, steps=3, hyper=TaskHyper(lr=0.1))
    np.testing.assert_allclose(plain["w"], [0.0, -4.0], atol=1e-6)  # K lr = 0.3
    with pytest.raises(ConfigError):
        scaffold_control_delta(c, delta, steps=3, hyper=TaskHyper(optimizer="adamw"))


def test_compressed_control_moves_ci_by_exactly_what_was_sent(model, tmp_path):
    """Lossy Δc_i: c_i moves by the decoded upload (what the coordinator adds to c), and the
    unsent rest waits in the residual: c_i + residual tracks the exact option-II sum."""
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend="numpy")
    store = DeviceStore(tmp_path / "dev", manifest.model_id)
    shared = runtime.initial("shared")
    rng = np.random.default_rng(3)
    c = {k: (0.02 * rng.normal(size=v.shape)).astype(np.float32) for k, v in shared.items()}
    lossy = CompressionSpec(quant_bits=4, topk_fraction=0.3, clip_norm=1e-6)  # the clip must not touch Δc_i
    hyper = TaskHyper(epochs=1, batch_size=10, lr=0.1)
    exact_sum = {k: np.zeros(v.shape, np.float64) for k, v in shared.items()}
    for r in (1, 2, 3):
        before = store.load_control() or {k: np.zeros_like(v) for k, v in shared.items()}
        personal = store.load_personal() or runtime.initial("personal")
        task = _task(model, shared, hyper, round_id=r, correction=c, compression=lossy)
        update = device.handle_task(task)
        sent = decompress_update(decode_tensors(update.control))
        after = store.load_control()
        for k in shared:
            np.testing.assert_array_equal(after[k], before[k] + sent[k])
        correction = {k: c[k].astype(np.float64) - before[k] for k in c}
        w, _, steps = _hand_sgd(model, device, task, shared, personal, correction, 0.0)
        for k in shared:
            exact_sum[k] += -c[k] - (w[k] - shared[k]) / (steps * hyper.lr)
    residual = store.load_control_residual()
    for k in shared:
        np.testing.assert_allclose(store.load_control()[k] + residual[k], exact_sum[k], atol=1e-4, err_msg=k)


def test_scaffold_with_adamw_is_declined_before_training(model, tmp_path):
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend="numpy")
    shared = runtime.initial("shared")
    zero_c = {k: np.zeros_like(v) for k, v in shared.items()}
    reply = device.handle_task(_task(model, shared, TaskHyper(optimizer="adamw", lr=0.01), correction=zero_c))
    assert isinstance(reply, Decline) and reply.reason == "bad_config" and reply.stage == "before"
    assert DeviceStore(tmp_path / "dev", manifest.model_id).load_personal() is None
    with pytest.raises(ConfigError, match="scaffold"):
        CoordinatorConfig(strategy="scaffold", hyper=TaskHyper(optimizer="adamw"))


def test_a_rejected_upload_puts_ci_back_and_an_accepted_one_keeps_it(model, tmp_path):
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend="numpy")
    store = DeviceStore(tmp_path / "dev", manifest.model_id)
    shared = runtime.initial("shared")
    c = {k: np.full(v.shape, 0.01, np.float32) for k, v in shared.items()}
    hyper = TaskHyper(epochs=1, batch_size=10, lr=0.1)
    lossy = CompressionSpec(quant_bits=8, topk_fraction=0.5)
    first = device.handle_task(_task(model, shared, hyper, round_id=1, correction=c, compression=lossy))
    writes = DURABLE_WRITES.snapshot()
    device.on_ack(Ack("dev", 1, "t1", first.update_id, True))
    assert DURABLE_WRITES.snapshot() == writes  # an accepted upload costs no write: its undo stays, inert
    kept, kept_residual = store.load_control(), store.load_control_residual()
    assert store.load_control_undo()[0] == first.update_id
    device.on_ack(Ack("dev", 1, "t1", first.update_id, False, "stale_round"))  # a late copy's refusal
    assert all(np.array_equal(store.load_control()[k], kept[k]) for k in kept)  # the accepted move stays

    second = device.handle_task(_task(model, shared, hyper, round_id=2, correction=c, compression=lossy))
    assert store.load_control_undo()[0] == second.update_id  # the next task's staged state replaced it
    assert any(not np.array_equal(store.load_control()[k], kept[k]) for k in kept)
    device.on_ack(Ack("dev", 2, "t2", "some-other-update", False))  # not the latest: ignored
    assert store.load_control_undo() is not None
    device.on_ack(Ack("dev", 2, "t2", second.update_id, False, "stale_round"))
    for k in kept:
        np.testing.assert_array_equal(store.load_control()[k], kept[k])
        np.testing.assert_array_equal(store.load_control_residual()[k], kept_residual[k])
    assert store.load_control_undo() is None


def test_a_task_without_scaffold_drops_an_earlier_upload_s_undo(model, tmp_path):
    d, manifest, runtime = model
    device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path, backend="numpy")
    store = DeviceStore(tmp_path / "dev", manifest.model_id)
    shared = runtime.initial("shared")
    c = {k: np.zeros(v.shape, np.float32) for k, v in shared.items()}
    first = device.handle_task(_task(model, shared, TaskHyper(epochs=1, batch_size=10), round_id=1, correction=c))
    device.on_ack(Ack("dev", 1, "t1", first.update_id, True))
    assert store.load_control_undo() is not None
    device.handle_task(_task(model, shared, TaskHyper(epochs=1, batch_size=10), round_id=2))
    assert store.load_control_undo() is None


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("steps", [1, 2, 7, 40])
def test_option_two_recovers_a_constant_gradient_under_momentum(momentum, steps):
    """Oracle: momentum SGD (torch semantics) from an empty buffer on a constant gradient g,
    with the correction c - c_i added to every step. c_i+ = c_i + Δc_i must be g exactly,
    however few the steps (a device with one batch) and whatever β."""
    rng = np.random.default_rng(steps)
    g, c, c_i = (rng.normal(size=5) for _ in range(3))
    lr, buf, moved = 0.05, np.zeros(5), np.zeros(5)
    for _ in range(steps):
        buf = momentum * buf + (g + c - c_i)
        moved -= lr * buf
    delta_c = scaffold_control_delta({"w": c}, {"w": moved}, steps, TaskHyper(lr=lr, momentum=momentum))
    np.testing.assert_allclose(c_i + delta_c["w"], g, rtol=1e-5, atol=1e-5)


def test_a_scaffold_task_starts_from_an_empty_momentum_buffer(model, tmp_path):
    """Round 2 trains the same whatever momentum buffer round 1 left: a device with a huge
    stale buffer and one with none send identical updates, even when the task asks to keep
    the optimizer state (SCAFFOLD overrides it)."""
    d, manifest, runtime = model
    shared = runtime.initial("shared")
    zero_c = {k: np.zeros_like(v) for k, v in shared.items()}
    hyper = TaskHyper(epochs=1, batch_size=10, lr=0.1, momentum=0.9, keep_optimizer_state=True)
    DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path / "a", backend="numpy").handle_task(
        _task(model, shared, hyper, round_id=1, correction=zero_c))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    stale = DeviceStore(tmp_path / "a" / "dev", manifest.model_id)
    state = stale.load_opt_state()
    assert state  # round 1 left a buffer behind
    stale.save_opt_state({k: np.full_like(v, 50.0) for k, v in state.items()})
    none = DeviceStore(tmp_path / "b" / "dev", manifest.model_id)
    none.save_opt_state(None)
    updates = [DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path / w, backend="numpy").handle_task(
        _task(model, shared, hyper, round_id=2, correction=zero_c)) for w in ("a", "b")]
    got = [decompress_update(decode_tensors(u.payload)) for u in updates]
    for k in shared:
        np.testing.assert_array_equal(got[0][k], got[1][k], err_msg=k)


# ------------------------------------------------------------------ the first personal head


@pytest.mark.parametrize("backend", BACKENDS)
def test_personal_head_from_global_starts_the_first_task_at_the_global_head(model, tmp_path, backend):
    """TaskHyper.personal_head_from_global: a device's first task trains from its personal head
    set to the task's global head (the other personal params at their initial values); off, from
    the initial values. Oracle: the local run written out (_hand_sgd) from each start."""
    d, manifest, runtime = model
    assert {"head_personal.weight", "head_global.weight"} <= {p.name for p in manifest.trainable}
    rng = np.random.default_rng(9)
    shared = {k: (v + 0.3 * rng.normal(size=v.shape)).astype(np.float32) for k, v in runtime.initial("shared").items()}
    zero = {k: np.zeros(v.shape, np.float64) for k, v in shared.items()}
    initial = runtime.initial("personal")
    from_global = {**initial, "head_personal.weight": shared["head_global.weight"].copy(),
                   "head_personal.bias": shared["head_global.bias"].copy()}
    assert not np.allclose(from_global["head_personal.weight"], initial["head_personal.weight"])
    for flag, start in ((True, from_global), (False, initial)):
        device = DeviceRuntime("dev", _data(), {manifest.model_id: d}, tmp_path / str(flag), backend=backend, seed=2)
        task = _task(model, shared, TaskHyper(epochs=2, batch_size=8, lr=0.1, max_grad_norm=0.0,
                                                      personal_head_from_global=flag))
        update = device.handle_task(task)
        assert isinstance(update, Update)
        w, _, _ = _hand_sgd(model, device, task, shared, start, zero, 0.0)
        delta = decompress_update(decode_tensors(update.payload))
        kept = DeviceStore(tmp_path / str(flag) / "dev", manifest.model_id).load_personal()
        for k in shared:
            np.testing.assert_allclose(delta[k], w[k] - shared[k], atol=2e-6, err_msg=f"{flag} {k}")
        for k in initial:
            np.testing.assert_allclose(kept[k], w[k], atol=2e-6, err_msg=f"{flag} {k}")
        # A second task continues from the device's own head, whatever the flag says.
        again = _task(model, shared, TaskHyper(epochs=1, batch_size=8, lr=0.1, max_grad_norm=0.0,
                                               personal_head_from_global=True), round_id=2)
        assert isinstance(device.handle_task(again), Update)
        w2, _, _ = _hand_sgd(model, device, again, shared, kept, zero, 0.0)
        after = DeviceStore(tmp_path / str(flag) / "dev", manifest.model_id).load_personal()
        for k in initial:
            np.testing.assert_allclose(after[k], w2[k], atol=2e-6, err_msg=f"{flag} second task {k}")
