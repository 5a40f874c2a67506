"""One real training task, run as a script by the packaging tests in a device's own Python
(a fresh x86_64 venv, an arm64 userland under qemu, or the test environment itself for the
reference result). It imports only what the wheel's [device] extra installs.

    python device_task.py ARTIFACTS STATE MODEL_ID DATA.npz

Prints one JSON object: the task's loss, its update as plain floats per tensor (dense fp32,
no compression, so two machines' results can be compared value by value) and which of
torch and onnx this Python could import (a device install has neither; the test environment
running the reference has both, so the caller decides what to assert).
"""

import importlib.util
import json
import sys

import numpy as np

from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import decode_dense, encode_dense
from fedge.edge_runtime.model_runtime import ModelRuntime


def main(art: str, state: str, model_id: str, data_path: str) -> dict:
    data = np.load(data_path)
    device = DeviceRuntime("devA", LocalData(data["x_train"], data["y_train"], data["x_test"], data["y_test"]),
                           {model_id: art}, state, backend="portable", seed=1)
    shared = ModelRuntime(art).initial("shared")
    task = TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=model_id, model_version=0,
                     params=encode_dense(shared), hyper=TaskHyper(epochs=2, batch_size=8, lr=0.1),
                     compression=CompressionSpec(quant_bits=32, error_feedback=False), seed=3)
    reply = device.handle_task(task)
    if not isinstance(reply, Update):
        raise SystemExit(f"the task was not trained: {reply}")
    update = {name: values.ravel().tolist() for name, values in decode_dense(reply.payload).items()}
    importable = [name for name in ("torch", "onnx") if importlib.util.find_spec(name) is not None]
    return {"loss": reply.metrics["loss"], "update": update, "importable": importable}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:5])))
