"""A red team's findings on the device: state files a device wrote and cannot read back, a wall
clock that jumps, and a copy of a task that came while another download of its model ran.

Each failed before its fix: a task raised EOFError out of the poll (never answered, every task
after it too); a restart replaced a good state.npz with a staged state damaged past its head (every
task after it declined as bad_state); a damaged tuned_head.npz, which no task reads, parked the
device for good; an update kept a minute ago was dropped unsent as "a week old"; and a copy of a
trained task got a FetchRequest instead of its Update.
"""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import (
    CompressionSpec,
    FetchRequest,
    TaskHyper,
    TrainTask,
    Update,
    device_topic,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.store import DeviceStore
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump
from tests.tiny_model import build_tiny_model

WEEK = 7 * 24 * 3600.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _task(model, task_id: str, version: int = 1, manifest_sha256: str = "") -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(3, task_id, DEVICE, manifest.model_id, version, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8, momentum=0.5, keep_optimizer_state=True),
                     CompressionSpec(quant_bits=8), manifest_sha256=manifest_sha256)


def _send(agent, coord, message, channel: str = "task") -> list:
    coord.publish(device_topic(DEVICE, channel), encode_message(message))
    return pump(agent, coord)


def _answers(sent: list) -> list:
    return [(type(m).__name__, getattr(m, "reason", "")) for m in sent if type(m).__name__ in ("Update", "Decline")]


# ---------------------------------------------------------------- global.npz

GLOBAL_DAMAGE = {
    "empty": lambda path: path.write_bytes(b""),  # a power cut on a filesystem that does not order data first
    "version_not_a_number": lambda path: np.savez(path, **{"//version": np.array("seven")}),
    "version_of_two_values": lambda path: np.savez(path, **{"//version": np.array([1, 2])}),
}


@pytest.mark.parametrize("damage", sorted(GLOBAL_DAMAGE))
def test_a_global_model_file_that_cannot_be_read_is_replaced_by_the_next_task(model, tmp_path, damage):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    assert _answers(_send(agent, coord, _task(model, "t1"))) == [("Update", "")]
    store = DeviceStore(tmp_path / "state" / DEVICE, model[1].model_id)
    GLOBAL_DAMAGE[damage](store.dir / "global.npz")
    assert store.global_version() is None  # unreadable: as if there were none (its docstring's promise)
    assert _answers(_send(agent, coord, _task(model, "t2", version=5))) == [("Update", "")]
    assert store.global_version() == 5  # the task's model replaced it
    expected = model[2].initial("shared")
    assert all(np.array_equal(store.load_global()[k], v) for k, v in expected.items())


# ---------------------------------------------------------------- a staged state at restart

def _flip_in_member(path, prefix: str) -> str:
    """Flip one byte of the array data of the first zip member whose name starts with `prefix`
    (np.savez stores members uncompressed): the file's head still reads, that array does not."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.startswith(prefix))
    data = bytearray(path.read_bytes())
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size - 2  # in the array's last value
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    return info.filename


def test_a_staged_state_damaged_past_its_head_is_set_aside_at_restart_and_the_state_kept(model, tmp_path):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    (update,) = [m for m in _send(agent, coord, _task(model, "t1")) if isinstance(m, Update)]
    home = tmp_path / "state" / DEVICE
    store = DeviceStore(home, model[1].model_id)
    state = store.dir / "state.npz"
    good = state.read_bytes()
    # A crash between keeping t1's update and applying its staged state, as journal.record leaves
    # it: the staged file is the next state (here: another personal head) and the update is kept.
    personal = {k: v + 1.0 for k, v in store.load_personal().items()}
    store.stage(update.update_id, {"personal": personal}, {"last_round": 3, "last_task": "t1"})
    staged = store.staged_path(update.update_id)
    member = _flip_in_member(staged, "personal/")
    with pytest.raises(zipfile.BadZipFile):  # the oracle: the damaged array does not read
        np.load(staged)[member[:-len(".npy")]]

    journal = DeviceJournal(home)
    journal.recover()  # a restart
    assert state.read_bytes() == good  # the state stays as before the task
    assert not staged.exists() and (staged.parent / f"{staged.name}.damaged").is_file()
    assert journal.kept(update.update_id) is not None  # its update is still sent

    agent2, coord2 = one_device(model, tmp_path / "state", clock=TickingClock())
    assert agent2.runtime.check_in().eligible
    assert _answers(_send(agent2, coord2, _task(model, "t2")))[-1] == ("Update", "")


# ---------------------------------------------------------------- tuned_head.npz

@pytest.mark.parametrize("damage", [b"", b"garbage" * 40])
def test_a_damaged_tuned_head_does_not_park_a_device_whose_tasks_train(model, tmp_path, damage):
    art, manifest, _ = model
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    assert _answers(_send(agent, coord, _task(model, "t1"))) == [("Update", "")]
    tuned = tmp_path / "state" / DEVICE / manifest.model_id / "tuned_head.npz"
    tuned.write_bytes(damage)  # written by personalize; no task, evaluation or export reads it
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 12)).astype(np.float32), rng.integers(0, 3, size=40)
    runtime = DeviceRuntime(DEVICE, LocalData(x, y, x[:8], y[:8]), {manifest.model_id: art}, tmp_path / "state")
    check_in = runtime.check_in()
    assert (check_in.eligible, check_in.reason) == (True, "")  # it said bad_state: parked for good
    assert isinstance(runtime.handle_task(_task(model, "t2")), Update)
    assert tuned.read_bytes() == damage


# ---------------------------------------------------------------- a wall clock that jumps

class JumpingWall(ManualClock):
    """Monotonic time as ManualClock; the wall clock off by `offset` (a board without an RTC
    booting at its last saved time, then NTP)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def wall(self) -> float:
        return super().wall() + self.offset


@pytest.mark.parametrize("jumps", [(0.0, 30 * 86400.0), (-8 * 86400.0, 0.0)],
                         ids=["forward_after_keeping", "back_while_keeping_then_set_right"])
def test_an_update_kept_a_minute_ago_is_resent_not_dropped_when_the_wall_clock_jumps(model, tmp_path, jumps):
    clock = JumpingWall()
    agent, coord = one_device(model, tmp_path / "state", clock=clock, republish_s=10.0, pending_max_age_s=WEEK)
    clock.offset = jumps[0]
    (update,) = [m for m in _send(agent, coord, _task(model, "t1")) if isinstance(m, Update)]
    clock.offset = jumps[1]  # NTP sets it right, or a jump
    clock.advance(60.0)
    resent = [m for m in pump(agent, coord) if isinstance(m, Update)]
    assert [m.update_id for m in resent] == [update.update_id]
    assert [item.update_id for item in agent.pending.items()] == [update.update_id]


def test_an_update_kept_by_this_run_is_still_dropped_after_pending_max_age(model, tmp_path):
    clock = JumpingWall()
    agent, coord = one_device(model, tmp_path / "state", clock=clock, republish_s=10.0, pending_max_age_s=100.0)
    _send(agent, coord, _task(model, "t1"))
    clock.offset = -1e6  # the wall clock back: the age is the monotonic clock's
    clock.advance(101.0)
    assert [m for m in pump(agent, coord) if isinstance(m, Update)] == [] and len(agent.pending) == 0


# ---------------------------------------------------------------- a copy of a trained task

def test_a_copy_of_a_trained_task_gets_its_update_while_a_download_of_its_model_runs(model, tmp_path):
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=TickingClock())
    (update,) = [m for m in _send(agent, coord, _task(model, "t1")) if isinstance(m, Update)]
    other = hashlib.sha256(b"a newer build of the model").hexdigest()
    sent = _send(agent, coord, _task(model, "t2", manifest_sha256=other))  # its model is fetched
    assert [type(m) for m in sent] == [FetchRequest]
    again = _send(agent, coord, _task(model, "t1"))  # the coordinator lost t1's update: it asks again
    assert [m.update_id for m in again if isinstance(m, Update)] == [update.update_id]
    assert not any(isinstance(m, FetchRequest) for m in again)
