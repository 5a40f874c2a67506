"""The README's walkthrough is a test (issue 10): every shell line of its ops and device
sections runs as written, one at a time, against a real Mosquitto, in a scratch folder.

The changes to what the README says are mechanical and listed here, and the README says them
too ("Running a real fleet"):
  - ports 1883 (broker) and 9108 (metrics) become free ports, in each line and in the config
    files the lines write (readme_walkthrough.with_ports);
  - `cmd &` runs in the background until the end of the test, then gets SIGTERM;
  - `fedge` is this environment's (its bin/ first on PATH), `mosquitto` the fixture's;
  - before a line in WAIT_BEFORE the test waits, as a person would, for what it names;
  - the scratch folder holds a link to the repository's `examples/`, as a checkout does.
A line the test cannot run is in NOT_RUN with the reason and the test that covers it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedge.coordinator.service import load_service_config
from fedge.edge_runtime.device_config import load_device_config
from fedge.edge_runtime.kernel.configfile import load_toml
from fedge.tools.broker import free_port
from tests.tools.readme_walkthrough import (
    BROKER_PORT,
    EXAMPLES,
    METRICS_PORT,
    ShellLine,
    rewrite_port_files,
    walkthrough_lines,
    with_ports,
)
from tests.tools.walkthrough_shell import Shell

CURL_LINE = "curl -s localhost:9108/metrics | grep fedge_rounds"
WAIT_BEFORE = {CURL_LINE: "the coordinator has committed its config's [service] rounds"}
NOT_RUN = {
    "make wheel": "creates .venv-test first (pip from the package index, torch among it); "
                  "tests/packaging/test_wheel.py builds the wheel with the same `pip wheel` command",
    'pip install "$(ls fedge-*.whl)[device]"': "pip from the package index; tests/packaging/test_wheel.py installs "
                                               "the built wheel with [device] in a fresh venv, probes and trains",
    'pip install "$(ls fedge-*.whl)[ort-training]"': "pip from the package index; `make test` installs the test "
                                                     "environment with [ort-training], and "
                                                     "tests/edge_runtime/test_ort_training_backend.py trains with it",
    "sudo sh hardware/install-device.sh --wheel fedge-0.1.0-py3-none-any.whl --id pi-007 --broker "
    "mqtts://coord.lan:8883": "installs into / (a system user, /opt/fedge, /etc/fedge); "
                              "tests/hardware/test_service.py runs install-device.sh on a scratch root",
    "sudo systemctl enable --now fedge-device": "needs systemd as PID 1; tests/hardware/test_service.py verifies the "
                                                "unit with systemd-analyze and its reload (SIGHUP)",
}
COMMITTED = 'fedge_rounds_total{outcome="committed"}'
EVALUATED = 'fedge_evaluations_total{outcome="complete"}'
ROUNDS_TIMEOUT_S = 90


def test_every_unrun_line_and_wait_names_a_readme_line():
    """A README edit cannot leave this test's lists behind: each names a line the README has."""
    commands = {line.command for line in walkthrough_lines()}
    assert set(NOT_RUN) <= commands, set(NOT_RUN) - commands
    assert set(WAIT_BEFORE) <= commands, set(WAIT_BEFORE) - commands
    background = [line.foreground_command for line in walkthrough_lines() if line.background]
    assert any("coordinator serve" in c for c in background) and any(c.startswith("mosquitto") for c in background)


def test_ports_change_only_where_a_port_stands():
    ports = {BROKER_PORT: 20001, METRICS_PORT: 20002}
    text = 'listener 1883 127.0.0.1\nurl = "mqtt://127.0.0.1:1883"\nmetrics_port = 9108\npassword = "x1883_18830"\n'
    assert with_ports(text, ports) == ('listener 20001 127.0.0.1\nurl = "mqtt://127.0.0.1:20001"\n'
                                       'metrics_port = 20002\npassword = "x1883_18830"\n')
    assert with_ports(CURL_LINE, ports) == "curl -s localhost:20002/metrics | grep fedge_rounds"


def test_the_example_configs_load_with_credentials_appended(tmp_path):
    """What `cat ../examples/ops/X.toml creds/X.toml > X.toml` makes is a valid config."""
    creds = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nusername = "{user}"\npassword = "secret"\n'
    examples = sorted((EXAMPLES / "ops").glob("*.toml"))
    for example in examples:
        (tmp_path / example.name).write_text(example.read_text() + creds.format(user=example.stem))
    service = load_service_config(tmp_path / "coordinator.toml")
    assert service.service.rounds > 0 and service.coordinator.metrics_port == METRICS_PORT
    devices = [load_device_config(tmp_path / e.name).device_id for e in examples if e.stem != "coordinator"]
    assert devices == ["dev-000", "dev-001"]


def test_no_host_fact_declines_the_example_devices(tmp_path):
    """The walkthrough's devices read the real probe; a CI host under 200 MiB available, on
    battery, hot or on a metered link declined them (the run then timed out waiting for rounds).
    Their [eligibility] passes the worst reading of every fact but a missing network, before and
    during training (an oracle of the facts' ranges, DeviceFacts' own bounds)."""
    from fedge.edge_runtime.eligibility import USABLE_LINKS, DeviceFacts, failing

    creds = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nusername = "{user}"\npassword = "secret"\n'
    worst = [DeviceFacts(battery_percent=0.0, charging=False, link=link, metered=True, temperature_c=150.0,
                         cpu_idle_percent=0.0, free_memory_mb=0.0, local_time_minutes=minutes)
             for link in (*USABLE_LINKS, "unknown") for minutes in (0, 719, 1439)]
    for example in sorted((EXAMPLES / "ops").glob("dev-*.toml")):
        (tmp_path / example.name).write_text(example.read_text() + creds.format(user=example.stem))
        policy = load_device_config(tmp_path / example.name).eligibility
        for facts in worst:
            assert failing(policy, facts, "before") == failing(policy, facts, "during") == (), (example.name, facts)


@pytest.fixture
def scratch():
    """A folder Mosquitto can reach after it drops root for its own user (pytest's tmp_path
    sits under a 0700 folder of root's), with `examples/` linked in as a checkout has it."""
    root = Path(tempfile.mkdtemp(prefix="fedge-walkthrough-"))
    root.chmod(0o755)
    (root / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.mosquitto
def test_the_readme_walkthrough_runs_as_written(scratch, mosquitto_binary):
    fedge = Path(sys.executable).with_name("fedge")
    assert fedge.exists(), f"no {fedge}: install fedge into this environment (pip install -e '.[test]')"
    ports = {BROKER_PORT: free_port(), METRICS_PORT: free_port()}
    path = os.pathsep.join([str(fedge.parent), str(Path(mosquitto_binary).parent), os.environ.get("PATH", "")])
    shell = Shell(cwd=scratch, env={**os.environ, "PATH": path}, logs=scratch / "logs")
    outputs: dict[str, str] = {}
    metrics = ""
    try:
        for line in walkthrough_lines():
            if line.command in NOT_RUN:
                continue
            if line.command in WAIT_BEFORE:
                metrics = _wait_for_rounds(shell, ports[METRICS_PORT])
            outputs[line.command] = _run(shell, line, ports)
    finally:
        shell.stop_all()
    logs = shell.tails()
    fleet = shell.cwd  # where the walkthrough's `cd` left it
    rounds = _rounds(fleet)
    # SIGTERM stops each cleanly: the broker, the devices' loops, the coordinator's /metrics linger,
    # and each fedge process says so in its log.
    assert [job.exit_code() for job in shell.started] == [0] * len(shell.started), logs
    for job in shell.started:
        if "fedge" in job.command:
            assert "stopped on SIGTERM/SIGINT" in job.log.read_text(), (job.command, logs)
    assert f"{COMMITTED} {rounds}.0" in outputs[CURL_LINE], outputs[CURL_LINE]
    assert f"{COMMITTED} {rounds}.0" in metrics and "fedge_round_participants 2.0" in metrics, metrics[:2000]
    _assert_eval_is_the_union_score(metrics, fleet)
    with sqlite3.connect(fleet / "coordinator.db") as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM rounds ORDER BY round_id")]
    assert statuses.count("committed") == rounds, logs
    for device in sorted(p.stem for p in (EXAMPLES / "ops").glob("dev-*.toml")):
        # Each device fetched the model over MQTT and verified it before training.
        assert list((fleet / "state" / device / "artifacts").glob("*/manifest.json")), logs
    (broker,) = [job for job in shell.started if job.command.startswith("mosquitto")]
    assert "Not authorized" not in broker.log.read_text(), logs
    # The round's model reached both devices as retained parts, not through the inline fallback.
    assert "asking for it inline" not in logs and "unknown_task" not in logs, logs


def _run(shell: Shell, line: ShellLine, ports: dict[int, int]) -> str:
    """One README line with free ports: started if it ends in `&`, else run to completion;
    then the ports in the files it wrote. Returns its output."""
    command = with_ports(line.foreground_command if line.background else line.text, ports)
    if line.background:
        shell.start(command)
        return ""
    if command.startswith("curl ") and shutil.which("curl") is None:
        return _curl_grep(command)
    done = shell.run(command)
    assert done.returncode == 0, f"`{line.text}` ({line.section}) exited {done.returncode}:\n" \
                                 f"{done.stdout[-2000:]}{done.stderr[-3000:]}\n{shell.tails()}"
    rewrite_port_files(shell.cwd, ports)
    return done.stdout


def _curl_grep(command: str) -> str:
    """`curl -s URL | grep WORD` on a machine without curl."""
    url, word = re.fullmatch(r"curl -s (\S+) \| grep (\S+)", command).groups()
    text = urllib.request.urlopen(f"http://{url}", timeout=5).read().decode()
    return "".join(line + "\n" for line in text.splitlines() if word in line)


def _wait_for_rounds(shell: Shell, metrics_port: int) -> str:
    """The metrics text once the coordinator has committed the rounds its config names."""
    rounds = _rounds(shell.cwd)
    deadline = time.monotonic() + ROUNDS_TIMEOUT_S
    metrics = ""
    # ... and taken the last model's evaluation (the service waits for it before it stops)
    while f"{COMMITTED} {rounds}.0" not in metrics or f'{EVALUATED} {rounds}.0' not in metrics:
        exited = [job.command for job in shell.started if job.exit_code() is not None]
        assert not exited and time.monotonic() < deadline, f"exited: {exited}; metrics:\n{metrics}\n{shell.tails()}"
        try:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
        except OSError:
            pass
        time.sleep(0.5)
    return metrics


def _assert_eval_is_the_union_score(metrics: str, fleet: Path) -> None:
    """Federated evaluation, asked of every device (examples/ops/coordinator.toml), in /metrics:
    its accuracy equals the final global model scored here on the union of both devices'
    held-out splits (the model from the coordinator's state file, the splits from data/)."""
    from fedge.coordinator.store import RoundStore
    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.edge_runtime.trainer import make_backend

    values = dict(re.findall(r'^(fedge_eval_[a-z_]+(?:\{[^}]*\})?) (\S+)$', metrics, re.M))
    store = RoundStore(fleet / "coordinator.db")
    state = store.load_state()
    assert float(values["fedge_eval_model_version"]) == state.version, values
    runtime = ModelRuntime(fleet / "artifacts")
    backend = make_backend("portable", runtime.dir, runtime.manifest, "sgd")
    hits = total = 0
    for split in sorted((fleet / "data").glob("dev-*.npz")):
        with np.load(split) as data:
            logits = backend.predict({**state.params, **runtime.initial("personal")}, runtime.embed(data["x_test"]))
            hits += int(np.sum(np.argmax(logits["global"], axis=1) == data["y_test"]))
            total += len(data["y_test"])
    assert float(values["fedge_eval_examples"]) == total, values
    assert float(values['fedge_eval_accuracy{model="global"}']) == pytest.approx(hits / total, abs=1e-9), values
    assert 0 <= float(values['fedge_eval_accuracy{model="personal"}']) <= 1, values
    assert store.evaluation_records()[-1]["accuracy_global"] == pytest.approx(hits / total, abs=1e-9)
    store.close()


def _rounds(fleet: Path) -> int:
    """The coordinator's round limit, from the config the walkthrough wrote."""
    return load_toml(fleet / "coordinator.toml")["service"]["rounds"]
