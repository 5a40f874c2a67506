"""The README's ops walkthrough, command by command, as separate processes: provision the
broker and identities, start Mosquitto with the shipped dev config (passwords + ACL), build
artifacts, split data, start `fedge coordinator serve`, start two `fedge device run`. The
devices do not have the model: they fetch it over MQTT, verify it, train, and the coordinator
commits its rounds. Metrics are scraped from the Prometheus endpoint."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fedge.tools.broker import free_port

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def fedge(*args: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "fedge.tools.cli", *args], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def spawn(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=cwd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def test_readme_ops_walkthrough(tmp_path, mosquitto_binary):
    ops = tmp_path
    port = free_port()
    metrics_port = free_port()
    fedge("provision", "broker", "--out", "broker", cwd=ops)
    fedge("provision", "coordinator", "--passwd-file", "broker/passwd", "--out", "creds",
          "--url", f"mqtt://127.0.0.1:{port}", cwd=ops)
    for device in ("dev-000", "dev-001"):
        fedge("provision", "device", "--id", device, "--passwd-file", "broker/passwd", "--out", "creds",
              "--url", f"mqtt://127.0.0.1:{port}", cwd=ops)
    conf = (ops / "broker/mosquitto-dev.conf").read_text().replace("listener 1883 127.0.0.1",
                                                                   f"listener {port} 127.0.0.1")
    if os.geteuid() == 0:
        conf += "\nuser root\n"  # as root, 2.0 drops to `mosquitto`, which cannot read our 0600 files
    (ops / "broker/mosquitto-dev.conf").write_text(conf)
    fedge("build-artifacts", "mnist-mlp-lora", "artifacts", "--ort-training", "no", cwd=ops)
    fedge("data", "split", "--dataset", "mnist5k", "--devices", "2", "--out", "data", cwd=ops)

    (ops / "coordinator.toml").write_text(f"""
[service]
min_devices = 2
rounds = 2
metrics_linger_s = 120   # the service exits right after its last commit; keep /metrics up until scraped

[coordinator]
artifacts_dir = "artifacts"
state_db = "coordinator.db"
metrics_port = {metrics_port}
clients_per_round = 2
over_selection = 1.0
round_deadline_s = 120
model_part_bytes = 262144   # the round's model as retained parts: the ACL must let devices read them

""" + (ops / "creds/coordinator.toml").read_text())
    for device in ("dev-000", "dev-001"):
        (ops / f"{device}.toml").write_text(f"""
device_id = "{device}"
state_dir = "state"

[data]
npz = "data/{device}.npz"

[eligibility]
min_cpu_idle_percent = 0   # the test machine is busy; a real device keeps the default

""" + (ops / f"creds/{device}.toml").read_text())

    procs = []
    try:
        broker = spawn([mosquitto_binary, "-c", "broker/mosquitto-dev.conf"], ops, ops / "mosquitto.log")
        procs.append(broker)
        coord = spawn([sys.executable, "-m", "fedge.tools.cli", "-v", "coordinator", "serve", "--config",
                       "coordinator.toml"],
                      ops, ops / "coordinator.log")
        procs.append(coord)
        for device in ("dev-000", "dev-001"):
            procs.append(spawn([sys.executable, "-m", "fedge.tools.cli", "-v", "device", "run", "--config",
                                f"{device}.toml"],
                               ops, ops / f"{device}.log"))
        metrics = ""
        deadline = time.monotonic() + 240
        while coord.poll() is None and time.monotonic() < deadline:
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            except OSError:
                pass
            if 'fedge_rounds_total{outcome="committed"} 2.0' in metrics:
                coord.terminate()  # SIGTERM ends the linger; the service exits cleanly
                coord.wait(timeout=30)
                break
            time.sleep(0.5)
        logs = "\n".join(f"== {p.name}\n{p.read_text()[-2500:]}" for p in sorted(ops.glob("*.log")))
        assert coord.returncode == 0, logs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    with sqlite3.connect(ops / "coordinator.db") as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM rounds ORDER BY round_id")]
    assert statuses.count("committed") == 2, logs
    # Each device fetched the model over MQTT and verified it before training.
    for device in ("dev-000", "dev-001"):
        fetched = list((ops / "state" / device / "artifacts").glob("*/manifest.json"))
        assert fetched, logs
    assert 'fedge_rounds_total{outcome="committed"} 2.0' in metrics, metrics[:2000]
    assert "fedge_round_participants 2.0" in metrics, metrics[:2000]
    assert "Not authorized" not in (ops / "mosquitto.log").read_text()
    # The round's model reached both devices as retained parts, not through the inline fallback.
    for log in ops.glob("*.log"):
        assert "asking for it inline" not in log.read_text() and "unknown_task" not in log.read_text(), logs
