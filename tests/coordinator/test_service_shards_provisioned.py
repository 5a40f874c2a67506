"""Sharded ingest on the broker `fedge provision` writes: mosquitto-dev.conf (password file, the
fedge ACL, use_username_as_clientid), `provision broker --shards 2`, `provision coordinator
--shards 2` and one `provision device` per device. The leader logs in as `coordinator`, the
worker of shard k as fedge-shard-k ([service] shard_credentials), so no process knocks another
off the broker, and every round commits a bit-exact model.

Its neighbours (test_service_shards.py) run on an open broker, where every coordinator process
could log in as `coordinator`; here that would give them one client id and no round would
commit.
"""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.configfile import load_toml
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.broker.process import MosquittoProcess, free_port
from fedge.tools.cli import main
from tests.coordinator.light_fleet import LightDevice, LightFleet
from tests.coordinator.test_service_faults import DEVICES, _config, _wait
from tests.coordinator.test_service_shards import _rows, _serve, assert_bit_exact, stop
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model
from tests.tools.test_broker import _local

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
import_psycopg()
K, ROUNDS = 2, 2


def _password(creds, user: str) -> str:
    return load_toml(creds / f"{user}.toml")["broker"]["password"]


def _provision(tmp, devices) -> tuple:
    conf, creds = tmp / "etc", tmp / "creds"
    assert main(["provision", "broker", "--out", str(conf), "--shards", str(K)]) == 0
    passwd = ["--passwd-file", str(conf / "passwd"), "--out", str(creds)]
    assert main(["provision", "coordinator", *passwd, "--shards", str(K)]) == 0
    for device in devices:
        assert main(["provision", "device", "--id", device, *passwd]) == 0
    return conf, creds


def test_leader_and_workers_with_their_own_users_commit_on_the_provisioned_broker(tmp_path, mosquitto_binary,
                                                                                 postgres_dsn):
    devices = [f"dev-{i}" for i in range(DEVICES)]
    conf, creds = _provision(tmp_path, devices)
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    shapes = {p.name: p.shape for p in manifest.by_role("shared")}
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    config = _config(tmp_path, url, art_dir, rounds=ROUNDS)
    state_db = f'state_db = "{tmp_path / "coordinator.db"}"'
    config.write_text(config.read_text()
                      .replace(f'url = "{url}"\n', f'url = "{url}"\nusername = "coordinator"\n'
                                                   f'password = "{_password(creds, "coordinator")}"\n')
                      .replace("[service]\n", f'[service]\nshard_credentials = "{creds}"\n')
                      .replace(state_db, f'state_dsn = "{postgres_dsn}"\nkeep_versions = 10\nshards = {K}\n'
                                         'aggregator = "mean"'))
    text = _local((conf / "mosquitto-dev.conf").read_text(), {1883: port})
    logs = {name: tmp_path / f"{name}.log" for name in ("leader", "w1", "w2")}
    with MosquittoProcess.from_text(text, port, workdir=tmp_path / "run", binary=mosquitto_binary) as broker:
        fleet = LightFleet([LightDevice(d, MqttSettings(url=url, username=d, password=_password(creds, d),
                                                        session_expiry_s=600, reconnect_min_s=0.2,
                                                        reconnect_max_s=1.0), shapes, i)
                            for i, d in enumerate(devices)])
        procs = {name: _serve(config, logs[name], *(("--role", "worker") if name != "leader" else ()))
                 for name in logs}
        try:  # (the light devices answer no evaluation task: the leader would wait for its deadline to exit)
            _wait(f"{ROUNDS} commits", lambda: len(_rows(postgres_dsn, "SELECT round_id FROM rounds WHERE "
                                                         "status = 'committed'")) >= ROUNDS,
                  60, procs["leader"], logs["leader"])
        finally:
            stop(procs.values())
            fleet.close()
        broker_log = broker.log_text()
    assert assert_bit_exact(postgres_dsn, DEVICES) == ROUNDS
    assert "already connected, closing old connection" not in broker_log, broker_log[-3000:]
    served = sorted(int(line.split("serving shard ")[1][0]) for name in ("w1", "w2")
                    for line in logs[name].read_text().splitlines() if "serving shard " in line)
    assert served == list(range(K)), served
    for k in range(K):  # each worker logged in as its shard's user: the client id the broker shows
        assert f"as fedge-shard-{k} (" in broker_log, broker_log[-3000:]
