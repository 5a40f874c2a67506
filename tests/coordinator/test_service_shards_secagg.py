"""Secure aggregation per shard group as services on a real Mosquitto and PostgreSQL:
`fedge coordinator serve --role leader` (shards = 2, secure aggregation on) and two
`--role worker` processes, 12 devices (DeviceAgents over MQTT), 3 rounds.

In round 2 one device of shard 0 dies after sharing its keys (when its ShareDelivery comes: it
never sends a masked input). Every committed model must equal the plain oracle: per shard
group the int64 sum of its survivors' quantized vectors mod 2^m, decoded, the groups added in
shard order, over the survivors' number; and the victim's round counts every device but it.
The masked inputs go to the leader (sharding/secure.py): the workers hold their shards' leases
and count nothing.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg.messages import SecAggTask, ShareDelivery
from tests.coordinator.test_service_faults import REPO, Fleet, _wait, drill  # noqa: F401 (a fixture)
from tests.coordinator.test_service_faults import _config as faults_config
from tests.coordinator.test_service_shards import _params, _rows, _serve, stop
from tests.coordinator.test_sharding_secagg import _expected_delta

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
DEVICES, ROUNDS, K = 12, 3, 2
VICTIM, VICTIM_ROUND = "dev-0", 2  # shard 0 (crc32("dev-0") % 2)


def _config(tmp, url, art_dir, dsn):
    path = faults_config(tmp, url, art_dir, rounds=ROUNDS)
    text = path.read_text().replace(" = 6\n", f" = {DEVICES}\n")
    # the victim stays connected (its loop stopped): min_devices and quorums leave room for it
    text = text.replace(f"min_reports = {DEVICES}\n", f"min_reports = {DEVICES - 2}\n")
    text = text.replace(f"min_devices = {DEVICES}\n", f"min_devices = {DEVICES - 1}\n")
    text = text.replace("round_deadline_s = 60\n", "round_deadline_s = 20\n")
    state_db = f'state_db = "{tmp / "coordinator.db"}"'
    assert state_db in text
    text = text.replace(state_db, f'state_dsn = "{dsn}"\nkeep_versions = 10\nshards = {K}\naggregator = "mean"\n'
                                  'weighting = "equal"')
    text = text.replace("[coordinator.compression]\nquant_bits = 8\n",
                        "[coordinator.compression]\nquant_bits = 32\nclip_norm = 4.0\n\n"
                        "[coordinator.secure_aggregation]\nenabled = true\nbits = 16\nclip_range = 0.5\n"
                        "stage_deadline_s = 8\n")
    assert "[coordinator.secure_aggregation]" in text
    assert "[coordinator.evaluation]" not in text
    # The dead victim never answers an evaluation: the last one would hold the leader's exit for
    # the default 120 s deadline (two thirds of this test's time), for nothing the test checks.
    text += "\n[coordinator.evaluation]\ndeadline_s = 10.0\n"
    path.write_text(text)
    return path


class Recorder:
    """Wraps each agent's SecAggParticipant: keeps every round's encoded input (the oracle's),
    and kills VICTIM when its round-VICTIM_ROUND ShareDelivery arrives (its shares are out)."""

    def __init__(self, fleet: Fleet):
        self.inputs: dict[int, dict[str, tuple]] = {}
        self.killed = threading.Event()
        for loop, agent in zip(fleet.loops, fleet.agents):
            self._wrap(loop, agent)

    def _wrap(self, loop, agent) -> None:
        participant, handle = agent.secagg, agent.secagg.on_message

        def on_message(message):
            if isinstance(message, ShareDelivery) and agent.device_id == VICTIM and message.round_id == VICTIM_ROUND:
                self.killed.set()
                loop.stop()  # dead: no masked input, no unmask answer, ever again
                return
            handle(message)
            if isinstance(message, SecAggTask) and participant.inputs:
                self.inputs.setdefault(message.task.round_id, {})[agent.device_id] = next(
                    iter(participant.inputs.values()))

        participant.on_message = on_message


def test_a_sharded_secure_fleet_commits_each_round_as_the_per_group_oracle_with_a_death_after_sharing(
        drill, postgres_dsn):  # noqa: F811
    tmp, broker, art_dir, manifest = drill
    config = _config(tmp, broker.url, art_dir, postgres_dsn)
    logs = {name: tmp / f"{name}.log" for name in ("leader", "w1", "w2")}
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={}, devices=DEVICES)
    recorder = Recorder(fleet)
    procs = {"leader": _serve(config, logs["leader"], "--role", "leader")}
    try:
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        _wait("both shards held", lambda: len(_rows(postgres_dsn, "SELECT shard FROM shard_leases")) == K, 60)
        assert procs["leader"].wait(timeout=300) == 0, logs["leader"].read_text()[-3000:]
    finally:
        stop(procs.values())
        fleet.close()
    assert recorder.killed.is_set()
    leader_log = logs["leader"].read_text()
    assert "shard groups" in leader_log
    rounds = _rows(postgres_dsn, "SELECT round_id, status, record FROM rounds ORDER BY round_id")
    committed = [(r, rec) for r, status, rec in rounds if status == "committed"]
    assert len(committed) >= 2, rounds
    assert not _rows(postgres_dsn, "SELECT 1 FROM shard_updates")  # workers counted nothing: no Update exists
    victim_round_seen = False
    for version, (round_id, record) in enumerate(committed, 1):
        record = json.loads(record)
        inputs = recorder.inputs[round_id]
        survivors = set(inputs) - ({VICTIM} if round_id == VICTIM_ROUND else set())
        victim_round_seen |= round_id == VICTIM_ROUND
        assert record["reports"] == len(survivors), (round_id, record)
        agents = [type("A", (), {"device_id": d, "secagg": type("S", (), {"inputs": {0: inputs[d]}})})
                  for d in sorted(inputs)]
        want = _expected_delta(agents, survivors)
        old, new = _params(postgres_dsn, version - 1), _params(postgres_dsn, version)
        got = np.concatenate([(new[k].astype(np.float64) - old[k]).reshape(-1) for k in sorted(new)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert victim_round_seen, committed
