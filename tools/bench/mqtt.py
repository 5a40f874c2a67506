"""`fedge bench mqtt`: one fedge round of N devices over loopback Mosquitto, next to raw paho
publishing the same update bytes, in the same run.

What is measured:
  raw_paho_seconds    N paho clients each publish one update-sized message (QoS 1) to its
                      update topic; one subscriber receives them all. First publish to last
                      receipt.
  raw_paho_round_trip_seconds
                      the round's traffic pattern without fedge: one paho client publishes to
                      each of N device clients a message the size of what fedge sent each device
                      (bytes_down / N: its task, ack and the like), and each device client
                      answers from its message callback with one update-sized message. First
                      publish to last answer. The same bytes both ways as the fedge round.
  fedge_round_seconds the coordinator begins a round for all N devices (over-selection 1.0):
                      N tasks carrying the shared params (the size of an update), or with
                      --model-part-bytes the params once as retained ModelParts and N small
                      tasks that name them by hash,
                      N real DeviceAgents answer with an Update of the given size, the
                      coordinator validates, aggregates and acks each, and commits. begin_round
                      to the commit.
  ratio               fedge_round_seconds / raw_paho_seconds (target <= 2: on top of the same
                      uplink bytes, a round fans the model out, validates, aggregates and acks).
  ratio_round_trip    fedge_round_seconds / raw_paho_round_trip_seconds: what fedge's own work
                      (codec, validation, aggregation, pending files, acks, its threads) adds to
                      moving the same bytes both ways.

The run fails, and reports nothing, unless the round commits with all N updates.

Devices here do not train: each answers its task with a precomputed fp32 update of
`update_kb` KiB (the training step is benchmarked by `fedge bench train-step`). Everything
else is the production path: DeviceAgent, codec, MqttTransport, Coordinator validation and
aggregation, acks, pending-upload files on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.evaluation import EvalConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.compress import compress_update
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, Manifest, ParamInfo
from fedge.edge_runtime.kernel.protocol import CheckIn, CompressionSpec, TrainTask, Update
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.kernel.update_codec import dense_fp32_bytes, encode_tensors
from fedge.edge_runtime.loop import AgentLoop
from fedge.tools.cli_args import MAX_KIB, int_in, out_file_arg, seconds_arg

log = logging.getLogger("fedge.bench.mqtt")


class ReplayRuntime:
    """Stands in for DeviceRuntime's training only: answers every task with a fixed update."""

    def __init__(self, device_id: str, state_root: Path, payload: bytes, dense_bytes: int, model_id: str):
        self.device_id = device_id
        self.state_root = state_root
        self.payload = payload
        self.dense_bytes = dense_bytes
        self.model_dirs = {model_id: state_root}
        self.announced: dict[str, int] = {}  # the agent notes each Announcement here (DeviceRuntime's)

    def check_in(self) -> CheckIn:
        return CheckIn(self.device_id, ("replay",), tuple(self.model_dirs), True, "", 100)

    def handle_task(self, task: TrainTask, deadline_check=None, journal=None) -> Update:
        return Update(self.device_id, task.round_id, task.task_id, uuid.uuid4().hex, task.model_id, task.model_version,
                      100, self.payload, self.dense_bytes)


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def _model(update_kb: int) -> tuple[Manifest, dict[str, np.ndarray]]:
    n = max(1, update_kb * 1024 // 4)
    params = (ParamInfo("w", (n,), "shared"),)
    manifest = Manifest("bench" + "0" * 19, "bench", {}, params, (1,), (1,), ("global",))
    return manifest, {"w": np.zeros(n, np.float32)}


# Devices per worker process. paho's loop uses select(), which cannot watch fd numbers >= 1024
# (3 fds per client, so at most about 340). Below that, fewer is faster: every device is two
# Python threads, and 500 threads behind one GIL starve each other. A 1000-device round took
# 14-24 s at 250 per process, 7.7 s at 100, 9.0 s at 50 and 12.8 s at 25 on a 2-core VM.
PER_PROCESS = 100


def _raw_client(host: str, port: int, device_id: str, answer: bytes | None) -> paho.Client:
    """A connected paho client; with `answer`, it replies to its task topic with that payload."""
    ready = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{device_id}", protocol=MQTTProtocolVersion.MQTTv5)
    if answer is None:
        c.on_connect = lambda *a: ready.set()
    else:
        c.on_connect = lambda client, *a: client.subscribe(f"raw/devices/{device_id}/task", qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = lambda client, userdata, message: client.publish(f"raw/devices/{device_id}/update", answer,
                                                                        qos=1)
    c.connect(host, port)
    c.loop_start()
    if not ready.wait(60):  # one at a time: a connect storm overflows the broker's listen backlog
        raise RuntimeError(f"raw paho client {device_id}: not connected and subscribed within 60 s")
    return c


def _device_worker(mode: str, url: str, ids: list[str], payload: bytes, dense: int, model_id: str, workdir: str,
                   ready, go, stop) -> None:
    """One process hosting up to PER_PROCESS devices: fedge agents, raw paho publishers ("raw"),
    or raw paho clients that answer a message with the payload ("raw-answer")."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port, _ = MqttSettings(url=url).endpoint()
    if mode == "raw-answer":
        clients = [_raw_client(host, port, device_id, payload) for device_id in ids]
        ready.put(len(clients))
        stop.wait()
        for c in clients:
            c.disconnect()
            c.loop_stop()
        return
    if mode == "raw":
        clients = [_raw_client(host, port, device_id, None) for device_id in ids]
        ready.put(len(clients))
        go.wait()
        for device_id, c in zip(ids, clients):
            c.publish(f"raw/devices/{device_id}/update", payload, qos=1)
        stop.wait()
        for c in clients:
            c.disconnect()
            c.loop_stop()
        return
    settings = MqttSettings(url=url, session_expiry_s=300, connect_timeout_s=60)
    loops, transports = [], []
    for device_id in ids:
        transport = MqttTransport(device_id, settings, will=DeviceAgent.last_will(device_id))
        transport.connect(timeout=60)  # one at a time, as above
        transports.append(transport)
        agent = DeviceAgent(ReplayRuntime(device_id, Path(workdir), payload, dense, model_id), transport,
                            checkin_s=3600, republish_s=120)
        agent.start()
        loop = AgentLoop(agent, poll_s=0.5)
        threading.Thread(target=loop.run, daemon=True, name=device_id).start()
        loops.append(loop)
    ready.put(len(loops))
    stop.wait()
    for loop in loops:
        loop.stop()
    for transport in transports:
        transport.close()


class _Workers:
    """Device processes for one phase; started before anything in this process opens a socket."""

    def __init__(self, mode, url, devices, payload, dense, model_id, workdir, timeout_s):
        ctx = mp.get_context("spawn")
        self.ready, self.go, self.stop = ctx.Queue(), ctx.Event(), ctx.Event()
        ids = [f"dev-{i:05d}" for i in range(devices)]
        self.procs = [ctx.Process(target=_device_worker,
                                  args=(mode, url, ids[i:i + PER_PROCESS], payload, dense, model_id,
                                                               workdir, self.ready, self.go, self.stop), daemon=True)
                      for i in range(0, devices, PER_PROCESS)]
        for proc in self.procs:
            proc.start()
        self.timeout_s = timeout_s

    def wait_ready(self) -> int:
        return sum(self.ready.get(timeout=self.timeout_s) for _ in self.procs)

    def close(self) -> None:
        self.stop.set()
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def raw_paho(url: str, devices: int, payload: bytes, workdir: str, timeout_s: float, down: bytes = b"") -> float:
    """Seconds for `devices` raw paho clients to deliver `payload` each to one subscriber. With
    `down`, the subscriber first sends `down` to each client, which answers with `payload`."""
    host, port, _ = MqttSettings(url=url).endpoint()
    got = threading.Event()
    count = [0]
    lock = threading.Lock()

    def on_message(client, userdata, message):
        with lock:
            count[0] += 1
            if count[0] >= devices:
                got.set()

    workers = _Workers("raw-answer" if down else "raw", url, devices, payload, 0, "", workdir, timeout_s)
    try:
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw-sub", protocol=MQTTProtocolVersion.MQTTv5)
        sub.on_message = on_message
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.connect(host, port)
        sub.loop_start()
        sub.subscribe("raw/devices/+/update", qos=1)
        subscribed.wait(30)
        workers.wait_ready()
        started = time.perf_counter()
        if down:
            for i in range(devices):
                sub.publish(f"raw/devices/dev-{i:05d}/task", down, qos=1)
        else:
            workers.go.set()
        if not got.wait(timeout_s):
            raise RuntimeError(f"raw paho: only {count[0]} of {devices} messages arrived in {timeout_s} s")
        elapsed = time.perf_counter() - started
        sub.disconnect()
        sub.loop_stop()
    finally:
        workers.close()
    return elapsed


def bench_config(devices: int, payload_bytes: int, timeout_s: float, model_part_bytes: int) -> CoordinatorConfig:
    """One round of every device's update, nothing after it: the commit's federated evaluation
    once went to the replay devices, which cannot evaluate (an AttributeError traceback in every
    device thread, on every run, exit 0)."""
    return CoordinatorConfig(clients_per_round=devices, over_selection=1.0, min_reports=devices,
                             round_deadline_s=timeout_s, compression=CompressionSpec(quant_bits=32),
                             max_update_bytes=4 * payload_bytes + (1 << 20), model_part_bytes=model_part_bytes,
                             evaluation=EvalConfig(every_rounds=0))


def fedge_round(url: str, devices: int, manifest: Manifest, initial: dict, workdir: Path, timeout_s: float,
                model_part_bytes: int) -> tuple[float, dict]:
    settings = MqttSettings(url=url, session_expiry_s=300, connect_timeout_s=60)
    rng = np.random.default_rng(0)
    delta = {"w": rng.normal(0, 0.01, initial["w"].shape).astype(np.float32)}
    tensors, _, _ = compress_update(delta, None, CompressionSpec(quant_bits=32), rng)
    payload = encode_tensors(tensors)
    dense = dense_fp32_bytes({"w": initial["w"].shape})
    ccfg = bench_config(devices, len(payload), timeout_s, model_part_bytes)
    # The devices' model directory: without a manifest there, a device would try to fetch the
    # model and decline (this coordinator serves no artifacts).
    atomic_write_bytes(workdir / MANIFEST_FILE, manifest.to_json().encode())
    # Subscribed before any device exists: check-ins are not retained.
    coordinator = Coordinator(MqttTransport("coordinator", settings).connect(), strategy_from_config(ccfg),
                              manifest, initial, ccfg)
    coordinator.start()
    workers = _Workers("fedge", url, devices, payload, dense, manifest.model_id, str(workdir), timeout_s)
    try:
        workers.wait_ready()  # meanwhile paho's thread queues the check-ins
        deadline = time.monotonic() + timeout_s
        while len(coordinator.registry) < devices:
            coordinator.pump(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(coordinator.registry)} of {devices} devices checked in")
        while coordinator.pump(0.2):
            pass  # status messages and the like, before timing
        started = time.perf_counter()
        coordinator.begin_round()
        record = None
        while record is None:
            coordinator.pump(0.05)
            while coordinator.pump(0.0):
                pass
            record = coordinator.tick()
        elapsed = time.perf_counter() - started
        coordinator.transport.close()
    finally:
        workers.close()
    if not record.committed or record.reports != devices:
        # A round that did not happen is not a measurement: refuse to report a ratio for it.
        raise RuntimeError(f"the benchmark round did not commit with all {devices} reports: {record.why}; "
                           f"declines {dict(coordinator.declines)}, rejections {dict(coordinator.rejections)}")
    update_bytes = len(encode_message(Update("dev-00000", 1, "t" * 32, "u" * 32, manifest.model_id, 0, 100, payload,
                                             dense)))
    return elapsed, {"committed": record.committed, "reports": record.reports, "bytes_up": record.bytes_up,
                     "bytes_down": record.bytes_down, "update_bytes": update_bytes, "payload_sample": payload}


def run(devices: int, update_kb: int, json_path: str | None, broker_url: str | None = None, timeout_s: float = 600,
        model_part_bytes: int = CoordinatorConfig.model_part_bytes) -> dict:
    _raise_fd_limit(8 * devices + 256)
    manifest, initial = _model(update_kb)
    bench_config(devices, 1, timeout_s, model_part_bytes)  # a ConfigError before a broker or a fleet starts
    broker = None
    with tempfile.TemporaryDirectory(prefix="fedge-bench-mqtt-") as tmp:
        if broker_url is None:
            from fedge.tools.broker import BrokerConfig, MosquittoProcess

            broker = MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp).start()
            broker_url = broker.url
        try:
            fedge_s, detail = fedge_round(broker_url, devices, manifest, initial, Path(tmp), timeout_s,
                                          model_part_bytes)
            sample = detail.pop("payload_sample")
            raw_message = encode_message(Update("raw", 1, "t" * 32, "u" * 32, manifest.model_id, 0, 100, sample, 0))
            raw_s = raw_paho(broker_url, devices, raw_message, tmp, timeout_s)
            down = bytes(max(1, detail["bytes_down"] // devices))  # what fedge sent each device, on average
            raw_rt_s = raw_paho(broker_url, devices, raw_message, tmp, timeout_s, down=down)
        finally:
            if broker is not None:
                broker.close()
    result = {
        "devices": devices,
        "update_kb": update_kb,
        "fedge_round_seconds": round(fedge_s, 4),
        "raw_paho_seconds": round(raw_s, 4),
        "ratio": round(fedge_s / raw_s, 3),
        "target_ratio": 2.0,
        "raw_paho_round_trip_seconds": round(raw_rt_s, 4),
        "ratio_round_trip": round(fedge_s / raw_rt_s, 3),
        "model_part_bytes": model_part_bytes,
        **detail,
        "device_processes": -(-devices // PER_PROCESS),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "paho_version": _paho_version(),
    }
    if json_path:
        atomic_write_bytes(Path(json_path), json.dumps(result, indent=2).encode())
    return result


def _paho_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("paho-mqtt")
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench mqtt", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int_in(1), default=1000)
    p.add_argument("--update-kb", type=int_in(1, MAX_KIB), default=100, help="size of each update (KiB)")
    p.add_argument("--broker", help="mqtt://host:port (default: start a local Mosquitto)")
    p.add_argument("--json", dest="json_path", type=out_file_arg, help="write the result here")
    p.add_argument("--timeout", type=seconds_arg, default=600.0, help="give up a phase after this many seconds")
    p.add_argument("--model-part-bytes", type=int, default=CoordinatorConfig.model_part_bytes,
                   help="the coordinator's model_part_bytes; 0 = params inline in every task (for comparison)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args.devices, args.update_kb, args.json_path, args.broker, args.timeout, args.model_part_bytes)
    print(json.dumps(result, indent=2))
    return 0
