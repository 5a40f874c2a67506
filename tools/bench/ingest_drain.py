"""The drain half of `fedge bench ingest`: a backlog of valid updates waits in the broker for
an offline persistent session, then the session's owner connects and drains it.

Two owners drain the same backlog (the same bytes on the same topics) the same way:

  raw paho     a paho client (MQTT 5, clean_start false, QoS 1 subscription) that only counts
               what arrives: the ceiling the broker, loopback and paho set.
  coordinator  the real Coordinator with a durable SQLite store (synchronous=FULL, the payloads
               in its payload log, as `state_db` runs in production) over MqttTransport: every update is decoded,
               validated, stored (durable before its Ack), aggregated and acked.

The coordinator's round is opened before the backlog is published (an update is valid only
for an open round's task), over the in-memory broker, so no task goes over MQTT; then its
MQTT link subscribes once and goes offline, which leaves the session and its subscriptions
in the broker. Timing starts when the new link's connect() is called and stops when the last
update has been handled (raw: received). The coordinator is pumped as CoordinatorLoop pumps it:
in bursts, each burst's accepted updates stored in one transaction (group_commit.py). The
publisher is one paho client that waits for every PUBACK before the drain starts, so it is
never on the clock.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.service import coordinator_link
from fedge.coordinator.sharding.config import shard_for
from fedge.coordinator.store import open_store
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.compress import compress_update
from fedge.edge_runtime.kernel.manifest import Manifest, ParamInfo
from fedge.edge_runtime.kernel.protocol import (
    CompressionSpec,
    Update,
    all_devices_topic,
    device_topic,
    shard_update_topic,
)
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.kernel.update_codec import dense_fp32_bytes, encode_tensors

SESSION_S = 3600  # session expiry of both drainers: longer than any phase
CHANNELS = ("checkin", "update", "status", "fetch")  # what Coordinator.start() subscribes to
BURST = 500  # messages per store transaction at most, as in coordinator/loop.py


def bench_model(params: int) -> tuple[Manifest, dict[str, np.ndarray]]:
    """One shared float32 tensor of `params` entries."""
    manifest = Manifest("bench" + "0" * 19, "bench", {}, (ParamInfo("w", (params,), "shared"),), (1,), (1,),
                        ("global",))
    return manifest, {"w": np.zeros(params, np.float32)}


def coordinator_config(devices: int, state_db: str, quant_bits: int) -> CoordinatorConfig:
    # aggregator "mean": the streaming weighted sum. The shipped default (norm_bound) keeps every
    # update of a round while it has under 5 earlier norms (O(k x model)), which for a first
    # round of thousands of 100 KB updates measures memory, not ingest.
    return CoordinatorConfig(clients_per_round=devices, over_selection=1.0, min_reports=devices,
                             round_deadline_s=24 * 3600, state_db=state_db, aggregator="mean",
                             compression=CompressionSpec(quant_bits=quant_bits))


def open_bench_round(cfg: CoordinatorConfig, manifest: Manifest, initial: dict, devices: int,
                     cls: type[Coordinator] = Coordinator) -> Coordinator:
    """A coordinator (durable store) with `devices` registered and round 1 open; its tasks went
    to an in-memory broker nobody listens on. cls: ShardedCoordinator for ingest_shards.py."""
    coordinator = cls(InMemoryBroker().connect("coordinator"), strategy_from_config(cfg), manifest, initial,
                      cfg, store=open_store(cfg))
    coordinator.start()
    now, wall = coordinator.clock.now(), coordinator.clock.wall()
    for i in range(devices):
        coordinator.registry.register(f"dev-{i:05d}", True, "", 100, now, wall)
    if not coordinator.begin_round():
        raise RuntimeError("the benchmark round did not begin")
    return coordinator


def backlog(tasks: dict[str, str], round_id: int, manifest: Manifest, quant_bits: int,
            seed: int, shards: int = 0) -> list[tuple[str, bytes]]:
    """One valid Update message per task: (topic, bytes). Each device's delta is its own draw.
    shards > 0: on the device's shard topic, as a sharded fleet uploads (ingest_shards.py)."""
    rng = np.random.default_rng(seed)
    (param,) = manifest.by_role("shared")
    dense = dense_fp32_bytes({param.name: param.shape})
    out = []
    for device_id, task_id in sorted(tasks.items()):
        delta = {param.name: rng.normal(0.0, 0.01, param.shape).astype(np.float32)}
        tensors, _, _ = compress_update(delta, None, CompressionSpec(quant_bits=quant_bits), rng)
        shard = shard_for(device_id, shards) if shards else -1
        update = Update(device_id, round_id, task_id, uuid.uuid4().hex, manifest.model_id, 0, 100,
                        encode_tensors(tensors), dense, shard=shard)
        topic = shard_update_topic(shard, device_id) if shards else device_topic(device_id, "update")
        out.append((topic, encode_message(update)))
    return out


def _paho(client_id: str) -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)


def _session_props() -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_S
    return props


def publish_backlog(host: str, port: int, messages: list[tuple[str, bytes]], timeout_s: float,
                    username: str = "", password: str = "") -> None:
    """Publish every message at QoS 1 and wait for all PUBACKs (the broker holds them then).
    username: a broker that requires one (ejabberd: "coordinator", who may publish anywhere)."""
    pub = _paho(f"bench-publisher-{uuid.uuid4().hex[:8]}")
    if username:
        pub.username_pw_set(username, password)
    pub.connect(host, port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout_s
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise RuntimeError(f"backlog: the broker did not acknowledge a publish within {timeout_s} s")
    finally:
        pub.disconnect()
        pub.loop_stop()


def raw_drain(host: str, port: int, messages: list[tuple[str, bytes]], timeout_s: float) -> float:
    """Seconds for a raw paho persistent session to receive the backlog published while it was away."""
    client_id = f"bench-raw-{uuid.uuid4().hex[:8]}"
    subscribed = threading.Event()
    first = _paho(client_id)
    first.on_connect = lambda client, *a: client.subscribe(all_devices_topic("update"), qos=1)
    first.on_subscribe = lambda *a: subscribed.set()
    first.connect(host, port, clean_start=False, properties=_session_props())
    first.loop_start()
    if not subscribed.wait(30):
        raise RuntimeError("raw drain: not subscribed within 30 s")
    first.disconnect()  # the session (and its subscription) stays for SESSION_S
    first.loop_stop()
    publish_backlog(host, port, messages, timeout_s)

    done, count, lock = threading.Event(), [0], threading.Lock()

    def on_message(client, userdata, message) -> None:
        with lock:
            count[0] += 1
            if count[0] >= len(messages):
                done.set()

    second = _paho(client_id)
    second.on_message = on_message
    started = time.perf_counter()
    second.connect(host, port, clean_start=False, properties=_session_props())
    second.loop_start()
    if not done.wait(timeout_s):
        raise RuntimeError(f"raw drain: {count[0]} of {len(messages)} messages in {timeout_s} s")
    elapsed = time.perf_counter() - started
    second.unsubscribe(all_devices_topic("update"))  # so later backlogs are not queued for this session
    time.sleep(0.2)
    second.disconnect()
    second.loop_stop()
    return elapsed


def prepare(workdir: Path, devices: int, params: int, quant_bits: int,
            seed: int) -> tuple[Coordinator, list[tuple[str, bytes]]]:
    """A coordinator with its round open, and the backlog: one valid update per device."""
    manifest, initial = bench_model(params)
    cfg = coordinator_config(devices, str(workdir / "coordinator.db"), quant_bits)
    coordinator = open_bench_round(cfg, manifest, initial, devices)
    ctx = coordinator.round.ctx
    return coordinator, backlog(ctx.tasks, ctx.round_id, manifest, quant_bits, seed)


def coordinator_drain(url: str, coordinator: Coordinator, messages: list[tuple[str, bytes]],
                      timeout_s: float) -> float:
    """Seconds for the coordinator to drain the backlog; its round must then commit with every
    update, or this raises (a round that did not happen is not a measurement)."""
    link = coordinator_link(MqttSettings(url=url, session_expiry_s=SESSION_S, connect_timeout_s=60),
                            coordinator.config)
    first = MqttTransport("coordinator", link).connect()
    for channel in CHANNELS:
        first.subscribe(all_devices_topic(channel))
    first.close()  # offline: the broker queues what comes for the session
    host, port, _ = link.endpoint()
    publish_backlog(host, port, messages, timeout_s)

    second = MqttTransport("coordinator", link)
    coordinator.transport = second
    handled = 0
    started = time.perf_counter()
    second.connect(timeout=60)
    deadline = time.monotonic() + timeout_s
    while handled < len(messages):
        with coordinator.store.burst():  # as CoordinatorLoop does: up to 500 messages, one store transaction
            burst = 0
            while burst < BURST and coordinator.pump(0.5 if burst == 0 else 0.0):
                burst += 1
        handled += burst
        if burst == 0 and time.monotonic() > deadline:
            raise RuntimeError(f"coordinator drain: {handled} of {len(messages)} updates in {timeout_s} s")
    elapsed = time.perf_counter() - started
    record = coordinator.tick()
    second.flush(30)
    second.close()
    coordinator.store.close()
    if record is None or not record.committed or record.reports != len(messages):
        raise RuntimeError(f"the benchmark round did not commit with all {len(messages)} updates: "
                           f"{record and record.why}; rejections {dict(coordinator.rejections)}")
    return elapsed
