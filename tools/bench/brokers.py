"""`fedge bench brokers`: messages per second through Mosquitto and through a two-node ejabberd
cluster, in one run, with the same clients and the same load.

Load: `--devices` MqttTransports (fedge's transport, QoS 1, persistent sessions) each publish
`--messages` messages of `--kb` KiB to their own update topic, all at once; one subscriber
(the coordinator's filter, fedge/v1/devices/+/update) receives them. On the cluster, the
devices alternate between the two nodes and the subscriber is on node 1, so half the traffic
crosses nodes, as a fleet spread over a cluster's nodes would. Reported: first publish to
last receipt, and messages per second. Every message must arrive, or the run fails. The
total stays within what both brokers queue for one subscriber (Mosquitto's max_queued_messages
and the shipped ejabberd max_queue, 1000 each): past that, a broker drops QoS 1 messages for
a subscriber that lags, which measures the queue limit, not the rate.

Both brokers are started here, on loopback ports (tools/broker): Mosquitto anonymous, as
`fedge simulate` runs it; ejabberd with the shipped config and a registered user per device.
Without ejabberd the result says so and holds Mosquitto's figures only.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.broker import BrokerConfig, MosquittoProcess
from fedge.tools.broker.ejabberd import INSTALL_HINT, EjabberdCluster, find_ejabberd
from fedge.tools.cli_args import MAX_KIB, int_in, out_file_arg, seconds_arg

UPDATES = "fedge/v1/devices/+/update"
MAX_TOTAL = 1000  # messages in one run: see the module docstring


def measure(device_settings: list[MqttSettings], sink_settings: MqttSettings, messages: int, kb: int,
            timeout_s: float) -> dict:
    """Publish `messages` x `kb` KiB from each device; seconds until the sink has them all."""
    sink = MqttTransport("coordinator", replace(sink_settings, max_message_bytes=1 << 20)).connect(timeout=30)
    devices = [MqttTransport(s.username or f"bench-{i}", s).connect(timeout=30) for i, s in enumerate(device_settings)]
    try:
        sink.subscribe(UPDATES)
        payload = bytes(kb * 1024)
        total = messages * len(devices)
        go = threading.Event()

        def publish(device: MqttTransport) -> None:
            go.wait()
            for _ in range(messages):
                device.publish(f"fedge/v1/devices/{device.client_id}/update", payload)

        threads = [threading.Thread(target=publish, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        go.set()
        got = 0
        while got < total and time.perf_counter() - started < timeout_s:
            if sink.receive(1.0) is not None:
                got += 1
        elapsed = time.perf_counter() - started
        if got < total:
            raise RuntimeError(f"only {got} of {total} messages arrived in {timeout_s:g} s")
        return {"messages": total, "seconds": round(elapsed, 4), "messages_per_s": round(total / elapsed, 1)}
    finally:
        for link in (sink, *devices):
            link.close()


def run(devices: int, messages: int, kb: int, json_path: str | None, timeout_s: float = 60.0) -> dict:
    ids = [f"bench-{i}" for i in range(devices)]
    result: dict = {"devices": devices, "messages_per_device": messages, "message_kb": kb, "qos": 1,
                    "machine": platform.machine()}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-brokers-") as tmp:
        broker = MosquittoProcess(BrokerConfig(persistence=False), workdir=Path(tmp) / "mosquitto").start()
        try:
            plain = MqttSettings(url=broker.url, session_expiry_s=300)
            result["mosquitto"] = measure([replace(plain, username=i) for i in ids], plain, messages, kb, timeout_s)
        finally:
            broker.close()
        found = find_ejabberd()
        if found is None:
            result["ejabberd_2_nodes"] = {"skipped": f"no ejabberd; {INSTALL_HINT}"}
        else:
            cluster = EjabberdCluster(*found, Path(tmp) / "ejabberd")
            try:
                cluster.start()
                for device_id in ids:
                    cluster.register(device_id)
                links = [cluster.settings(d, node=i % 2, session_expiry_s=300) for i, d in enumerate(ids)]
                result["ejabberd_2_nodes"] = measure(links, cluster.settings("coordinator", node=0), messages, kb,
                                                     timeout_s)
            finally:
                cluster.close()
            result["ejabberd_vs_mosquitto"] = round(result["ejabberd_2_nodes"]["messages_per_s"]
                                                    / result["mosquitto"]["messages_per_s"], 3)
    if json_path:
        atomic_write_bytes(Path(json_path), json.dumps(result, indent=2).encode())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench brokers", description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int_in(1), default=10)
    p.add_argument("--messages", type=int_in(1), default=50, help="messages each device publishes")
    p.add_argument("--kb", type=int_in(0, MAX_KIB), default=10, help="size of each message (KiB)")
    p.add_argument("--json", dest="json_path", type=out_file_arg, help="write the result here")
    p.add_argument("--timeout", type=seconds_arg, default=60.0, help="give up a broker's phase after this many seconds")
    args = p.parse_args(argv)
    if not 0 < args.devices * args.messages <= MAX_TOTAL:
        p.error(f"devices x messages must be 1..{MAX_TOTAL} (the brokers' per-subscriber queue)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(run(args.devices, args.messages, args.kb, args.json_path, args.timeout), indent=2))
    return 0
