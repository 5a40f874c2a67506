"""Soak probe: `fedge coordinator serve` beside a real Mosquitto with 6 `fedge device run`
processes on loopback, for --minutes of wall time, with churn (kill -9 and restart a device
every --device-churn rounds, the coordinator at 1/3 and 2/3 of the run, the broker at 1/2),
sampling every --every seconds what could grow: RSS, fds and threads of the coordinator, of
one device (dev-000) and of Mosquitto, the state db and its -wal, the payload log folder,
every path under the device's state folder, and the log files. Not a test: it measures.

    .venv-test/bin/python benchmarks/results/2026-12-06-soak/soak.py --minutes 15 --json samples.json

Everything it runs lives in a fresh temporary folder (--workdir, removed at the end unless
--keep). Needs `mosquitto` on PATH or in /usr/sbin.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
FEDGE = str(BIN / "fedge")
DEVICES = [f"dev-{i:03d}" for i in range(6)]
SPEC = """[model]
name = "soak-tiny"
input_shape = [64]
num_classes = 10
head = "dual"
lora_rank = 2
lora_alpha = 4.0

[[model.layers]]
name = "fc1"
units = 8
mode = "lora"
"""
COORDINATOR = """
[service]
min_devices = 3
rounds = 0
round_pause_s = {pause}

[coordinator]
artifacts_dir = "artifacts"
state_db = "coordinator.db"
metrics_port = {metrics_port}
clients_per_round = 4
over_selection = 1.0
min_reports = 2
round_deadline_s = 8
model_part_bytes = 262144  # as examples/ops/coordinator.toml: retained model parts
pace_idle_s = 2
pace_declined_s = 5
pace_jitter_s = 1
task_resend_s = 5

[coordinator.hyper]
epochs = 1
batch_size = 32

[coordinator.evaluation]
every_rounds = 1
devices = 3
deadline_s = 5
"""
DEVICE = """
device_id = "{id}"
state_dir = "state"

[data]
npz = "data/{id}.npz"

[eligibility]
min_cpu_idle_percent = 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def proc_facts(pid: int | None) -> dict:
    """RSS (kB), open fds, threads and CPU seconds of a live process; {} if gone."""
    if pid is None:
        return {}
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_kb": rss, "fds": fds, "threads": threads, "cpu_s": cpu_s}


def tree(root: Path) -> dict:
    """path (relative) -> bytes, for every file, and every folder (ending in /: all files below it)."""
    files: dict[str, int] = {}
    folders: dict[str, int] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        folders[os.path.relpath(dirpath, root) + "/"] = 0
        for name in filenames:
            try:
                files[os.path.relpath(os.path.join(dirpath, name), root)] = os.path.getsize(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
    for key, n in files.items():
        parent = os.path.dirname(key)
        folders["./"] += n
        while parent:
            folders[parent + "/"] += n
            parent = os.path.dirname(parent)
    return {**files, **folders}


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def folder(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return {"bytes": sum(size(p) for p in files), "files": len(files)}


def metrics(port: int) -> dict:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r'(fedge_model_version|fedge_rounds_total\{outcome="(\w+)"\}) ([0-9.e+]+)', line)
        if m:
            out[m.group(2) or "model_version"] = float(m.group(3))
    return out


class Fleet:
    def __init__(self, work: Path, broker_port: int, metrics_port: int, verbose: bool):
        self.work, self.broker_port, self.metrics_port = work, broker_port, metrics_port
        self.flags = ["-v"] if verbose else []
        self.procs: dict[str, subprocess.Popen] = {}
        (work / "logs").mkdir()

    def start(self, name: str) -> None:
        log = open(self.work / "logs" / f"{name}.log", "ab")
        if name == "mosquitto":
            mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            cmd = [mosq, "-c", "broker/mosquitto-dev.conf"]
        elif name == "coordinator":
            cmd = [FEDGE, *self.flags, "coordinator", "serve", "--config", "coordinator.toml"]
        else:
            cmd = [FEDGE, *self.flags, "device", "run", "--config", f"{name}.toml"]
        self.procs[name] = subprocess.Popen(cmd, cwd=self.work, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def kill9(self, name: str) -> None:
        p = self.procs[name]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    def pid(self, name: str) -> int | None:
        p = self.procs.get(name)
        return p.pid if p is not None and p.poll() is None else None

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def setup(work: Path, broker_port: int, metrics_port: int, pause: float) -> None:
    run([FEDGE, "provision", "broker", "--out", "broker"], work)
    conf = work / "broker" / "mosquitto-dev.conf"
    # the port only: persistence stays in broker/data, which provisioning gave the mosquitto user
    conf.write_text(conf.read_text().replace("listener 1883 ", f"listener {broker_port} "))
    url = f"mqtt://127.0.0.1:{broker_port}"
    run([FEDGE, "provision", "coordinator", "--passwd-file", "broker/passwd", "--out", "creds", "--url", url], work)
    for dev in DEVICES:
        run([FEDGE, "provision", "device", "--id", dev, "--passwd-file", "broker/passwd", "--out", "creds",
             "--url", url], work)
    (work / "spec.toml").write_text(SPEC)
    run([FEDGE, "build-artifacts", "spec.toml", "artifacts"], work)
    run([FEDGE, "data", "split", "--dataset", "digits", "--devices", str(len(DEVICES)), "--out", "data"], work)
    # `fedge data split` names its files by its own ids; give each device one
    made = sorted((work / "data").glob("*.npz"))
    for dev, path in zip(DEVICES, made):
        if path.name != f"{dev}.npz":
            path.rename(work / "data" / f"{dev}.npz")
    (work / "coordinator.toml").write_text(COORDINATOR.format(metrics_port=metrics_port, pause=pause)
                                          + (work / "creds" / "coordinator.toml").read_text())
    for dev in DEVICES:
        (work / f"{dev}.toml").write_text(DEVICE.format(id=dev) + (work / "creds" / f"{dev}.toml").read_text())


def sample(fleet: Fleet, t0: float) -> dict:
    w = fleet.work
    logs = {p.name: size(p) for p in sorted((w / "logs").iterdir())}
    return {
        "t_s": round(time.monotonic() - t0, 1),
        "metrics": metrics(fleet.metrics_port),
        "coordinator": proc_facts(fleet.pid("coordinator")),
        "device": proc_facts(fleet.pid("dev-000")),
        "mosquitto": proc_facts(fleet.pid("mosquitto")),
        # CPU seconds of every process the probe started (live ones, plus the reaped: killed or stopped)
        "fleet_cpu_s": round(sum(proc_facts(fleet.pid(n)).get("cpu_s", 0) for n in fleet.procs)
                             + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                             + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime, 2),
        "db_bytes": size(w / "coordinator.db"),
        "db_wal_bytes": size(w / "coordinator.db-wal"),
        "payloads": folder(w / "coordinator.db.payloads"),
        "device_state": tree(w / "state" / "dev-000"),
        "state_all_devices": folder(w / "state"),
        "mosquitto_data": folder(w / "broker" / "data"),
        "logs": logs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--device-churn", type=int, default=30, help="kill -9 a device every this many rounds")
    ap.add_argument("--pause", type=float, default=0.0, help="[service] round_pause_s")
    ap.add_argument("--quiet", action="store_true", help="run fedge without -v (default: -v, as the systemd unit)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedge-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    broker_port, metrics_port = free_port(), free_port()
    setup(work, broker_port, metrics_port, args.pause)
    fleet = Fleet(work, broker_port, metrics_port, verbose=not args.quiet)
    events: list[dict] = []
    samples: list[dict] = []
    fleet.start("mosquitto")
    time.sleep(1)
    fleet.start("coordinator")
    for dev in DEVICES:
        fleet.start(dev)
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    churn = {"coordinator": [1 / 3, 2 / 3], "mosquitto": [1 / 2]}
    next_device_round, victim = args.device_churn, 0
    try:
        while time.monotonic() < end:
            s = sample(fleet, t0)
            samples.append(s)
            version = int(s["metrics"].get("model_version", -1))
            print(f"t={s['t_s']:7.1f}s v={version} coord={s['coordinator'].get('rss_kb')}kB "
                  f"dev={s['device'].get('rss_kb')}kB db={s['db_bytes']} wal={s['db_wal_bytes']}", flush=True)
            frac = (time.monotonic() - t0) / (end - t0)
            for name, at in churn.items():
                if at and frac >= at[0]:
                    at.pop(0)
                    fleet.kill9(name)
                    time.sleep(1)
                    fleet.start(name)
                    events.append({"t_s": s["t_s"], "round": version, "kill9": name})
            if version >= next_device_round:
                name = DEVICES[victim % len(DEVICES)]
                victim += 1
                next_device_round = version + args.device_churn
                fleet.kill9(name)
                time.sleep(0.5)
                fleet.start(name)
                events.append({"t_s": s["t_s"], "round": version, "kill9": name})
            time.sleep(max(0.0, args.every - (time.monotonic() - t0 - s["t_s"])))
        samples.append(sample(fleet, t0))
    finally:
        fleet.stop_all()
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "events": events, "samples": samples}, indent=1))
        if not args.keep:
            shutil.rmtree(work)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
