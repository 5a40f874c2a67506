"""A coordinator restarted with [coordinator.privacy] turned on while a round (or an async buffer)
opened with privacy off is still open. That round has no privacy plan, so it resumed without one:
the updates it took after the restart, from devices told privacy is on, were neither clipped to S
nor noised, its model was released with no ledger event, and `fedge coordinator privacy` said
nothing was spent. Now the start is refused by name (dp/budget.py check_open), as a DP round that
no longer fits the budget is: finish the open round with privacy off and [service] rounds at its
version + 1 (the service then stops with no round open), then turn it on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.coordinator.test_async_server import _send
from tests.tiny_model import build_tiny_model

PRIVACY = PrivacyConfig(enabled=True, target_epsilon=50.0, delta=1e-5, noise_multiplier=1.0, clip_norm=0.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _open_round_then_privacy_on(model, tmp_path, **config):
    """A round open with privacy off (one update in it when `mode` is async), then a restart with
    privacy on; returns the restarted coordinator or raises what its start raises."""
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(db), weighting="equal", **config)
    devs = [ManualDevice(fleet, f"m{i}", 10) for i in range(3)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round() and c.round.privacy is None
    c.tick()
    fleet.drain()
    _send(fleet, devs[0], random_delta(c.shapes, np.random.default_rng(0), scale=5.0))  # far over S = 0.5
    assert c.state.version == 0 and c.round is not None
    return fleet.restart(store=RoundStore(db), config=replace(c.config, privacy=PRIVACY))


@pytest.mark.parametrize("config", [
    {"mode": "async", "async_": AsyncConfig(concurrency=3, buffer_size=3, max_staleness=5)},
    {"clients_per_round": 3, "over_selection": 1.0},
], ids=["async", "sync"])
def test_a_round_opened_with_privacy_off_is_refused_by_a_restart_with_privacy_on(model, tmp_path, config):
    with pytest.raises(ConfigError, match=r"open round 1 was opened with privacy off.*finish it with "
                                          r"\[coordinator.privacy\] enabled = false and \[service\] rounds = 1, "):
        _open_round_then_privacy_on(model, tmp_path, **config)


def test_the_way_out_the_refusal_names_finishes_the_buffer_and_then_privacy_turns_on(model, tmp_path):
    """The control, and the refusal's advice: privacy still off resumes the open buffer; with the
    service's stop at version 1 ([service] rounds = 1) it flushes and opens no next one, and the
    restart with privacy on then starts, its first buffer planned and charged."""
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(db), weighting="equal", mode="async",
                       async_=AsyncConfig(concurrency=3, buffer_size=3, max_staleness=5))
    devs = [ManualDevice(fleet, f"m{i}", 10) for i in range(3)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    again = fleet.restart(store=RoundStore(db))
    assert again.round is not None and again.round.privacy is None
    again.stop_after = lambda record: again.state.version >= 1  # the service's should_stop, rounds = 1
    again.tick()
    fleet.drain()
    rng = np.random.default_rng(1)
    for d in devs:
        _send(fleet, d, random_delta(again.shapes, rng))
    assert again.state.version == 1 and again.round is None
    on = fleet.restart(store=RoundStore(db), config=replace(c.config, privacy=PRIVACY))
    assert on.round is None and on.begin_round() and on.round.privacy is not None
