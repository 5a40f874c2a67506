"""Version counters and staleness across coordinator restarts, against FedBuff's step as a plain
loop over the wire deltas (test_async_server.fedbuff_oracle): the scenario of
test_async_server's first test (5 devices, K = 3, max_staleness 1), with the process killed
after the first flush and again before the stale update. A task dispatched on v0 and answered
after a restart at v1 is one version old (weight 2^-1/2); one answered at v2 is rejected
stale_update by name; the restored version is the committed one each time."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import assert_params, copy_params, random_delta
from tests.coordinator.test_async_server import _fleet, _send, fedbuff_oracle
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_staleness_counts_from_the_restored_version_across_restarts(model, tmp_path):
    db, rng = tmp_path / "state.db", np.random.default_rng(3)
    fleet, devs = _fleet(model, tmp_path, 5, store=RoundStore(db))
    c, v0 = fleet.coordinator, copy_params(fleet.coordinator.state.params)
    first = [_send(fleet, d, random_delta(c.shapes, rng)) for d in devs[:3]]
    c.tick()
    assert c.state.version == 1
    assert_params(c.state.params, fedbuff_oracle(v0, first, [0, 0, 0]))

    c = fleet.restart(store=RoundStore(db))  # killed after the flush: m3 and m4 still train on v0
    fleet.drain()
    assert c.state.version == 1 and c.machine.version == 1
    assert {d: c.machine.flight(d).base_version for d in ("m3", "m4")} == {"m3": 0, "m4": 0}
    c.tick()
    fleet.drain()
    assert [d.task().model_version for d in devs] == [1, 1, 1, 0, 0]
    v1 = copy_params(c.state.params)
    second = [_send(fleet, devs[3], random_delta(c.shapes, rng)), _send(fleet, devs[0], random_delta(c.shapes, rng),
                                                                         "u2")]
    second.append(_send(fleet, devs[1], random_delta(c.shapes, rng), "u2"))
    assert c.state.version == 2
    assert_params(c.state.params, fedbuff_oracle(v1, second, [1, 0, 0]))

    c = fleet.restart(store=RoundStore(db))  # and again: m4's v0 task is now two versions behind
    fleet.drain()
    assert c.state.version == 2 and c.machine.flight("m4").base_version == 0
    _send(fleet, devs[4], random_delta(c.shapes, rng))
    assert c.rejections["stale_update"] == 1 and devs[4].acks()[-1] == (False, "stale_update")
    assert c.machine.flight("m4") is None and c.state.version == 2
    assert_params(c.state.params, fedbuff_oracle(v1, second, [1, 0, 0]))
