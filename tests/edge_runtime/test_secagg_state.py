"""A secure-aggregation task on a device whose state cannot be read or its folder made.

The participant reads the residual before training, outside handle_task: a damaged state.npz
(DeviceStateError) or a model state folder that cannot be made (StateWriteError) escaped the
agent's poll, and the task was never answered (its round waited for the deadline). Now
handle_task meets the same error and the task is declined saying why, as a plain task is.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, device_topic
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump
from tests.tiny_model import build_tiny_model


@pytest.mark.parametrize("fault", ["damaged", "no_folder", "no_folder_once"])
def test_a_secure_task_whose_state_cannot_be_read_is_declined_saying_why(tmp_path, monkeypatch, fault):
    model = build_tiny_model(tmp_path / "tiny")
    _, manifest, runtime = model
    folder = tmp_path / "state" / DEVICE / manifest.model_id
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    if fault == "damaged":
        folder.mkdir(parents=True)
        (folder / "state.npz").write_bytes(b"a bad sector")
    else:
        real_mkdir, tries = Path.mkdir, []

        def mkdir(path, *args, **kwargs):
            if path == folder and (fault == "no_folder" or not tries):
                tries.append(path)
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    task = TrainTask(1, "t1", DEVICE, manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8), CompressionSpec(quant_bits=32, error_feedback=False,
                                                                        clip_norm=0.5))
    coord.publish(device_topic(DEVICE, "task"), encode_message(SecAggTask(task, SecAggSpec(), sharing=2)))
    declines = [m for m in pump(agent, coord) if isinstance(m, Decline)]
    reason, named = {"damaged": ("bad_state", "state.npz cannot be read"),
                     "no_folder": ("state_unwritable", "cannot be made"),
                     # made by the task: its residual was never read, so it does not take part
                     "no_folder_once": ("secagg_failed", "could not be read before the task")}[fault]
    assert [(d.task_id, d.reason) for d in declines] == [("t1", reason)] and named in declines[0].detail
