"""A noise-only round (coordinator/noise_round.py) on its two less travelled paths: with adaptive
clipping it commits the next S with the model, as every DP round does (the count is 0 plus its
noise, drawn after the deltas' noise from the round's stream: Andrew et al. 2021's update as a
plain loop); when the model guard refuses its model the round is abandoned and still
charged (the noise was drawn and the draw released either way); and an async DP buffer's open row, which selects no one
too, is not taken for one."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from fedge.coordinator import noise_round
from fedge.coordinator.dp.round import next_clip, split_noise
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, copy_params, make_fleet, noise_entropy
from tests.coordinator.test_dp_empty_draw import IDS, KEY, _empty_seed
from tests.coordinator.test_dp_rounds import DP, S, _privacy
from tests.tiny_model import build_tiny_model

SIGMA, QUANTILE, LR = 1.0, 0.5, 0.2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _empty_round(model, tmp_path, **privacy):
    seed = _empty_seed(RoundStore(tmp_path / "probe.db").next_round_id())
    fleet = make_fleet(model, tmp_path, clients_per_round=1, min_reports=1, round_deadline_s=5.0, seed=seed,
                       store=RoundStore(tmp_path / "s.db"), **DP, privacy=_privacy(sampling="poisson", **privacy))
    fleet.coordinator.privacy.noise_key = lambda round_id: KEY
    for device_id in IDS:
        ManualDevice(fleet, device_id, 10)
    fleet.drain()
    return fleet, seed


def test_an_adaptive_noise_only_round_commits_the_next_clip(model, tmp_path):
    fleet, seed = _empty_round(model, tmp_path, target_quantile=QUANTILE, clip_count_stddev=SIGMA, clip_lr=LR)
    c = fleet.coordinator
    old, round_id = copy_params(c.state.params), c.next_round_id
    assert c.begin_round() and c.round is None  # the empty draw: run and closed at once
    record = c.tick()
    assert record.committed and record.reports == 0
    rng = np.random.default_rng(noise_entropy(KEY, seed, round_id))
    for value in old.values():  # the deltas' noise comes first
        rng.normal(0.0, split_noise(1.0, SIGMA) * S, size=value.shape)
    cohort = c.store.privacy_ledger()[0]["cohort"]
    fraction = (0 - 0 / 2 + rng.normal(0.0, SIGMA)) / cohort + 0.5  # nobody within S, of nobody
    assert float(c.state.extra["dp"]["clip_norm"]) == pytest.approx(next_clip(S, fraction, QUANTILE, LR), rel=1e-12)


def test_a_noise_only_round_the_guard_refuses_is_abandoned_and_charged(model, tmp_path, monkeypatch):
    fleet, _ = _empty_round(model, tmp_path)
    c = fleet.coordinator
    monkeypatch.setattr(noise_round, "commit_fault", lambda old, new, holdout: "the guard set's loss is 9x")
    assert c.begin_round()
    record = c.tick()
    assert not record.committed and record.why == "the guard set's loss is 9x" and c.state.version == 0
    assert [(e["cohort"], e["sampling"]) for e in c.store.privacy_ledger()] == [(1, "poisson")]


def test_an_open_dp_buffer_of_async_mode_is_not_run_as_a_noise_only_round_in_sync(model, tmp_path):
    """An async buffer's row selects no one and, under DP, holds a plan of fixed sampling (an async
    buffer cannot be Poisson): restarted with mode = "sync" it is refused by name, as any open
    buffer is (restart.resume), not taken for an empty Poisson draw, run as noise alone and charged."""
    db = tmp_path / "s.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=2, store=RoundStore(db), **DP, privacy=_privacy())
    for device_id in IDS[:2]:
        ManualDevice(fleet, device_id, 10)
    fleet.drain()
    assert fleet.coordinator.begin_round() and fleet.coordinator.round.privacy.sampling != "poisson"
    with sqlite3.connect(db) as conn:  # the row as async mode writes a buffer: no one selected, target K
        conn.execute("UPDATE rounds SET selected = '[]', tasks = '{}' WHERE status = 'open'")
    conn.close()
    with pytest.raises(ConfigError, match="is an open async buffer; finish it with mode = 'async'"):
        fleet.restart(store=RoundStore(db))
    assert RoundStore(db).privacy_ledger() == []  # nothing charged
