"""One real DeviceAgent on an in-memory broker, and a coordinator client that reads what it
sends: the harness of device tests that speak to it message by message."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel import codec
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import Decline, Update, device_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from tests.tiny_model import CLASSES, FEATURES

DEVICE = "devA"


class TickingClock(ManualClock):
    """Every reading moves time on 10 ms, as training steps would: a task that never ends
    runs into a time limit instead of hanging the test."""

    def now(self) -> float:
        self.t += 0.01
        return self.t


def one_device(model, root, channels=("update",), abort_check=None, **agent_kw) -> tuple[DeviceAgent, object]:
    """(started agent "devA" with 40 random examples, coordinator client subscribed to the
    device's `channels`); abort_check: the runtime's, asked between training steps."""
    art, manifest, _ = model
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=40)
    runtime = DeviceRuntime(DEVICE, LocalData(x, y, x[:8], y[:8]), {manifest.model_id: art}, root, seed=3,
                            abort_check=abort_check)
    broker = InMemoryBroker()
    coord = broker.connect("coordinator")
    for channel in channels:
        coord.subscribe(device_topic(DEVICE, channel))
    agent = DeviceAgent(runtime, broker.connect(DEVICE), **agent_kw)
    agent.start()
    return agent, coord


def stepping_device(model, root, step_s: float = 1.0, start: float = 0.0, **agent_kw):
    """(one_device's agent and coordinator client, its ManualClock from `start`): every training
    step takes step_s on the clock (40 examples, batch 8: 5 steps an epoch)."""
    clock = ManualClock(start)

    def a_step():
        clock.advance(step_s)
        return None

    return (*one_device(model, root, abort_check=a_step, clock=clock, **agent_kw), clock)


def pump(agent, coord) -> list:
    """Run the agent until it has nothing to do; what it sent, decoded."""
    while agent.poll(0.0):
        pass
    agent.tick()
    sent = []
    while (msg := coord.receive(0.0)) is not None:
        sent.append(decode_message(msg.payload))
    return sent


def reply_to(agent, coord, message):
    """Send `message` on the device's task channel; its one Update or Decline."""
    coord.publish(device_topic(DEVICE, "task"), encode_message(message))
    (reply,) = [r for r in pump(agent, coord) if isinstance(r, (Update, Decline))]
    return reply


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256 (a snapshot to compare)."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def reframed(message, edit) -> bytes:
    """`message` encoded, its body map changed by `edit` (values the codec would refuse to
    encode: a NaN learning rate, an unknown field), framed again with a good checksum."""
    frame = encode_message(message)
    body = msgpack.unpackb(frame[codec.HEADER_SIZE:-codec.TRAILER_SIZE], raw=False)
    edit(body)
    packed = msgpack.packb(body, use_bin_type=True)
    head = frame[:7] + struct.pack("<I", len(packed))  # magic, version and type code kept
    return head + packed + struct.pack("<I", zlib.crc32(packed, zlib.crc32(head)))
