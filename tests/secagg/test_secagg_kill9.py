"""Kill -9 the real coordinator service (`fedge coordinator serve`, its own process, SQLite
store) while a secure round is in its unmask stage. No individual update is ever stored or
revealed: the store holds no update rows, the interrupted round is abandoned on restart (its
keys and masked inputs died with the process), and the next round commits under a new id."""

from __future__ import annotations

import signal
import threading

import pytest

from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.protocol import all_devices_topic
from fedge.edge_runtime.kernel.secagg.messages import UnmaskRequest
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.secagg_participant import SecAggParticipant
from tests.coordinator.test_service_faults import Fleet, _query, _rounds, _serve, _wait, drill  # noqa: F401
from tests.coordinator.test_service_faults import _config as service_config

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


def _config(tmp, url, art_dir):
    """The fault drills' service config, made secure."""
    path = service_config(tmp, url, art_dir, rounds=2)
    text = path.read_text().replace("min_reports = 6", "min_reports = 4")
    text = text.replace("task_resend_s = 1.0", 'task_resend_s = 1.0\naggregator = "mean"\nweighting = "equal"')
    text = text.replace("quant_bits = 8", "quant_bits = 32\nclip_norm = 4.0")
    path.write_text(text + "\n[coordinator.secure_aggregation]\nenabled = true\nstage_deadline_s = 15\n")
    return path


def test_kill9_in_the_unmask_stage_reveals_nothing_and_the_next_round_commits(drill, monkeypatch):  # noqa: F811
    tmp, broker, art_dir, manifest = drill
    db, log = tmp / "coordinator.db", tmp / "coordinator.log"
    reveal = SecAggParticipant._reveal
    # Devices hold their answers to the unmask request until the coordinator is dead, so the kill
    # lands in the stage however long the test takes to see the request (a fixed 2 s hold once
    # raced a stalled test machine: answers in, round committed, no open round left to kill).
    may_reveal = threading.Event()

    def held_reveal(self, message):
        may_reveal.wait(60)
        reveal(self, message)

    monkeypatch.setattr(SecAggParticipant, "_reveal", held_reveal)
    spy = MqttTransport("spy", MqttSettings(url=broker.url)).connect()
    spy.subscribe(all_devices_topic("task"))
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={})
    proc = _serve(_config(tmp, broker.url, art_dir), log)

    def unmask_requested() -> bool:
        while (msg := spy.receive(0.05)) is not None:
            if isinstance(decode_message(msg.payload), UnmaskRequest):
                return True
        return False

    try:
        _wait("the first unmask request", unmask_requested, 120, proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        may_reveal.set()  # late answers to a dead coordinator's round; the next rounds' come at once
        assert [r[1] for r in _rounds(db)] == ["open"]
        assert _query(db, "SELECT COUNT(*) FROM updates")[0][0] == 0  # nothing individual was ever stored
        proc = _serve(_config(tmp, broker.url, art_dir), log)
        _wait("a committed round after the restart",
              lambda: any(r[1] == "committed" for r in _rounds(db)), 180, proc, log)
    finally:
        may_reveal.set()
        if proc.poll() is None:
            proc.kill()
        fleet.close()
        spy.close()
    rows = _rounds(db)
    assert rows[0][1] == "abandoned" and "cannot resume" in rows[0][2]["why"]
    committed = [r for r in rows if r[1] == "committed"]
    assert committed[0][0] > rows[0][0] and committed[0][2]["reports"] >= 4
    assert _query(db, "SELECT COUNT(*) FROM updates")[0][0] == 0
