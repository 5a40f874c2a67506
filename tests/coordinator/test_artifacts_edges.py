"""Artifact serving at its documented limits (coordinator/artifacts.py): one transfer per device
per min_interval_s exactly, a name asked for many times sent once, the rate limit kept for
live devices when the table of 10,000 remembered devices is pruned, and a model directory
holding another model than the coordinator runs refused at start."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedge.coordinator.artifacts import FetchRateLimited, open_artifacts
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE
from fedge.edge_runtime.kernel.protocol import FetchRequest
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _server(model, interval=60.0):
    art, manifest, _ = model
    return open_artifacts(SimpleNamespace(artifacts_dir=str(art), fetch_interval_s=interval), manifest.model_id)


def _fetch(server, device, now, files=(MANIFEST_FILE,)) -> list[str]:
    """A whole transfer; the names sent."""
    return [f.path for f in server.transfer(FetchRequest(device, server.model_id, files), now)]


def test_a_device_may_fetch_again_exactly_min_interval_s_after_its_last_transfer(model):
    server = _server(model, interval=60.0)
    _fetch(server, "pi", 100.0)
    with pytest.raises(FetchRateLimited):
        server.plan(FetchRequest("pi", server.model_id), 159.999)
    assert _fetch(server, "pi", 160.0) == [MANIFEST_FILE]


def test_a_name_asked_for_many_times_is_sent_once(model):
    server = _server(model)
    name = sorted(server.manifest.files)[0]
    assert _fetch(server, "pi", 0.0, files=(name, name, MANIFEST_FILE, name)) == [MANIFEST_FILE, name]


def test_pruning_the_remembered_devices_keeps_the_rate_limit_of_live_ones(model):
    server = _server(model, interval=60.0)
    for i in range(10_000):  # the table is full (_PRUNE_AT)
        _fetch(server, f"d{i}", 0.0)
    _fetch(server, "late", 30.0)  # prunes: every entry is 30 s old, still inside the interval
    with pytest.raises(FetchRateLimited):
        server.plan(FetchRequest("d0", server.model_id), 31.0)
    _fetch(server, "later", 61.0)  # prunes the 10,000 whose interval has passed
    assert _fetch(server, "d0", 61.0) == [MANIFEST_FILE]
    with pytest.raises(FetchRateLimited):
        server.plan(FetchRequest("late", server.model_id), 61.0)


def test_a_model_directory_of_another_model_is_refused_at_start(model):
    art, manifest, _ = model
    with pytest.raises(ConfigError, match=f"holds model {manifest.model_id}, the coordinator runs other-model"):
        open_artifacts(SimpleNamespace(artifacts_dir=str(art), fetch_interval_s=60.0), "other-model")
