"""An async coordinator restarted with an open buffer and a changed [coordinator.async] buffer_size
or [coordinator.privacy] enabled: the open buffer finishes under the settings it opened with.

Oracle for the buffer size: the same updates sent to a coordinator that was never restarted; the
committed params must be bit-identical (central DP's noise is drawn from (noise key, seed,
buffer id), the key pinned in _dp_fleet and stored with the buffer's plan, so the reference draws
the same). The privacy ledger charges a DP buffer as one event of
sensitivity S, which holds only while each device gives it one update.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _dp_fleet, _send
from tests.tiny_model import build_tiny_model

K = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _buffer(model, tmp_path, devices: int, sent: int, restart_with=None):
    """A DP buffer of K on a state file; `sent` devices answer, then (restart_with: config changes)
    the process is replaced by one with the changed config, and the other devices answer."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "state.db"
    fleet, devs = _dp_fleet(model, tmp_path, devices=devices, buffer_size=K, store=RoundStore(db))
    fleet.coordinator.tick()  # every device gets a task
    fleet.drain()
    rng = np.random.default_rng(8)
    deltas = [random_delta(fleet.coordinator.shapes, rng, scale=0.01) for _ in devs]
    for d, delta in list(zip(devs, deltas))[:sent]:
        _send(fleet, d, delta, "u1")
    if restart_with is not None:
        fleet.restart(store=RoundStore(db), config=replace(fleet.coordinator.config, **restart_with))
        fleet.coordinator.tick()
        fleet.drain()
    return fleet, devs, deltas


@pytest.mark.parametrize("new_k", [K - 1, K + 1])
def test_a_dp_buffer_resumed_under_another_buffer_size_flushes_at_its_own(model, tmp_path, new_k):
    """It flushed at the new K while its mean divided by the plan's W = old K: with K - 1 at once,
    two updates over three (the model moved by 2/3 of their mean); with K + 1 it waited for a
    fourth update and divided four by three."""
    ref, ref_devs, deltas = _buffer(model, tmp_path / "ref", devices=K + 1, sent=K)
    assert ref.coordinator.state.version == 1
    changed = {"async_": replace(ref.coordinator.config.async_, buffer_size=new_k)}
    fleet, devs, _ = _buffer(model, tmp_path / "restart", devices=K + 1, sent=K - 1, restart_with=changed)
    c = fleet.coordinator
    assert c.state.version == 0  # two of its three: not full
    _send(fleet, devs[K - 1], deltas[K - 1], "u1")
    assert c.state.version == 1
    for name, value in ref.coordinator.state.params.items():
        assert c.state.params[name].tobytes() == value.tobytes(), name
    ledger = RoundStore(tmp_path / "restart" / "state.db").privacy_ledger()
    assert [p["expected_cohort"] for p in ledger] == [K]
    assert c.machine.buffer_size == new_k == c.round.machine.target  # the next buffer takes the new K


def test_a_dp_buffer_resumed_with_privacy_off_still_takes_one_update_per_device(model, tmp_path):
    """Its charge (one event of sensitivity S) goes to the ledger at the flush however privacy is
    set now; with privacy off the per-device limit became a fair share, ceil(K / 2) = 2 in a fleet
    of two, and the device that had given gets a second task into the same buffer."""
    fleet, devs, _ = _buffer(model, tmp_path, devices=2, sent=1, restart_with={"privacy": PrivacyConfig()})
    c = fleet.coordinator
    assert c.round.privacy is not None and c.round.ctx.round_id == 1
    assert c.machine.flight(devs[0].id) is None, "a second update of one device into a charged DP buffer"
    assert c.machine.flight(devs[1].id) is not None


def test_a_dp_buffer_a_lowered_target_cannot_afford_is_refused_at_start(model, tmp_path):
    """As in sync mode (test_dp_restart_config.py): it resumed and its flush took ε over the target."""
    fleet, _, _ = _buffer(model, tmp_path, devices=2, sent=1)
    cfg = fleet.coordinator.config
    lower = fleet.coordinator.round.privacy.epsilon_after / 2
    with pytest.raises(ConfigError, match=rf"over privacy.target_epsilon = {lower:g}"):
        fleet.restart(store=RoundStore(tmp_path / "state.db"),
                      config=replace(cfg, privacy=replace(cfg.privacy, target_epsilon=lower)))
