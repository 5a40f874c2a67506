"""The device's own floor on t (graph.threshold_floor), checked against what the coordinator
sends: a KeyDirectory whose t would let the coordinator collect enough shares of one kind to
learn something is declined by name before any share is made."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedge.edge_runtime.kernel.protocol import Decline
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.messages import KeyDirectory
from fedge.edge_runtime.secagg_participant import WEAK_THRESHOLD, SecAggParticipant

MODEL = "cd" * 32


def _decline_reason(tmp_path, cohort_size: int, k: int, t: int) -> str:
    cohort = tuple(f"d{i:02d}" for i in range(cohort_size))
    sent: list = []
    device = SecAggParticipant(SimpleNamespace(device_id="d03", state_root=tmp_path), sent.append)
    device.sessions["task"] = sess.start("d03", 4, MODEL)
    device.on_message(KeyDirectory("d03", 4, "task", cohort, k, t, 99, ()))  # no neighbour keys relayed
    (reply,) = sent
    assert isinstance(reply, Decline)
    return reply.reason


@pytest.mark.parametrize("cohort_size,k,t,weak", [
    (20, 8, 5, True),     # sparse: packed shares reveal nothing only below t - 1, so t = k/2 + 1 is too low
    (20, 8, 6, False),    # sparse, t = k/2 + 2: accepted (then declined for the missing keys instead)
    (20, 9, 6, None),     # odd k below a complete graph: no circulant graph, refused as a failure
    (5, 4, 3, False),     # complete graph (k = n - 1): plain shares, t = k/2 + 1 is enough
    (5, 4, 2, True),      # complete graph, 2t <= k
    (5, 10, 2, True),     # k above the cohort is a complete graph: t = 2 of 4 is too low
])
def test_a_threshold_below_the_floor_for_the_graph_is_declined_by_name(tmp_path, cohort_size, k, t, weak):
    reason = _decline_reason(tmp_path, cohort_size, k, t)
    if weak is None:
        assert reason != WEAK_THRESHOLD
    else:
        assert (reason == WEAK_THRESHOLD) == weak, reason
        if not weak:
            assert reason == sess.TOO_FEW_NEIGHBOURS  # got past the floor: no keys were relayed
