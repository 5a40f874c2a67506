"""A coordinator serving for months keeps a bounded window of round records in memory.

`Coordinator.history` was a list that every closed round appended to and nothing trimmed: a
`fedge coordinator serve` soak (benchmarks/results/2026-12-06-soak) closes a round a second,
so a service grows by one RoundRecord per round for as long as it runs. It now keeps the
latest HISTORY_KEPT (the store keeps every closed round's record; a simulator keeps the
records its rounds return).
"""

from __future__ import annotations

import pytest

from fedge.coordinator import server
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline, TrainTask
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_history_keeps_the_latest_records_only(model, tmp_path, monkeypatch):
    monkeypatch.setattr(server, "HISTORY_KEPT", 3)
    fleet = make_fleet(model, tmp_path, clients_per_round=1, abandon_backoff_s=0.0)
    c = fleet.coordinator
    dev = ManualDevice(fleet, "flaky", 4)
    fleet.drain()
    closed = []  # oracle: every record tick() returned, in order
    for _ in range(7):
        assert c.begin_round()
        dev.inbox.clear()
        dev.receive()
        (task,) = [m for m in dev.inbox if isinstance(m, TrainTask)]
        dev.send(encode_message(Decline("flaky", task.round_id, task.task_id, "battery_low")))
        fleet.drain()
        closed.append(c.tick())
        dev.check_in()  # eligible again for the next round
        fleet.drain()
    assert [r.round_id for r in closed] == list(range(1, 8)) and not any(r.committed for r in closed)
    assert list(c.history) == closed[-3:]
