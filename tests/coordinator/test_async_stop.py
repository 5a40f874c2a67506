"""The loop's should_stop ([service] rounds: exit at that model version) in async mode. A flush
opens the next buffer at once, inside the message that filled it, before the loop sees the
record: the buffers of one burst of messages, and those that filled while the loop waited
for the last evaluation, used to commit versions past the target (and, under central DP,
charge a flush each). No buffer opens after the flush should_stop calls the last; the updates
that come after it are not acked, so their devices keep them for the next start.
Oracle: the target itself."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.loop import CoordinatorLoop
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_burst_of_updates_commits_no_version_past_should_stop(model, tmp_path):
    fleet, devs = _fleet(model, tmp_path, 3, buffer_size=1, max_staleness=5)  # all three dispatched
    c = fleet.coordinator
    rng = np.random.default_rng(2)
    for d in devs:  # three updates queued: one burst of the loop, K = 1
        d.send(encode_message(d.update(random_delta(c.shapes, rng))))
    seen = []
    loop = CoordinatorLoop(c, poll_s=0.0, on_round=seen.append, should_stop=lambda r: c.state.version >= 1)
    loop._started = True  # started by make_fleet
    loop.run()
    assert c.state.version == 1 and [r.committed for r in seen] == [True]
    assert [r["committed"] for r in c.store.round_records()] == [True]
    acked = [d.id for d in devs if any(ok for ok, _ in d.acks())]
    assert len(acked) == 1 and c.round is None  # the other two were not acked: kept by their devices
    assert c.machine.in_flight == 2
