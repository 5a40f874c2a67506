"""The registry's cap (coordinator/registry_cap.py, [coordinator] max_devices): on an open broker
one client can check in as any number of device ids, and every new id used to add a store row
and a registry record for good. Past max_devices a new id is refused by name (registry_full),
logged and counted; the devices already known keep checking in and training, in sync, async
and sharded mode.

Oracle: the registry holds exactly the first max_devices distinct ids in arrival order, and
every check-in of any other id is refused (a plain loop over the sequence sent)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.checkin_limit import CheckInLimit
from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.errors import CheckInTooOften, RegistryFull
from fedge.coordinator.limits import MAX_FLEET, MAX_REGISTRY
from fedge.coordinator.registry_cap import CheckInGate
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.coordinator.service import load_service_config
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CheckIn, Pace, all_devices_topic, device_topic
from tests.coordinator.fleet import make_fleet, random_delta
from tests.tiny_model import build_tiny_model

ASYNC = dict(mode="async", async_=AsyncConfig(concurrency=3, buffer_size=3))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def expected(sequence: list[str], cap: int) -> tuple[set[str], int]:
    """The oracle: the ids registered (the first `cap` distinct ones) and the check-ins refused."""
    admitted = set(list(dict.fromkeys(sequence))[:cap])
    return admitted, sum(device not in admitted for device in sequence)


def flood(broker, ids: list[str], client: str = "flooder"):
    """One client checking in as every id (no ACL on the in-memory broker); it also hears every reply."""
    t = broker.connect(client)
    t.subscribe(all_devices_topic("task"))
    for device in ids:
        t.publish(device_topic(device, "checkin"), encode_message(CheckIn(device, eligible=True, num_examples=9)))
    return t


def replied_to(t) -> set[str]:
    out = set()
    while (msg := t.receive(0.0)) is not None:
        if isinstance(decode_message(msg.payload), Pace):
            out.add(msg.topic.split("/")[-2])
    return out


def exported(c, reason: str) -> float:
    return c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": reason})


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("seed", range(3))
def test_the_registry_holds_the_first_max_devices_ids_and_refuses_every_other_by_name(model, tmp_path, mode,
                                                                                      seed, caplog):
    rng = np.random.default_rng(seed)
    cap = int(rng.integers(3, 25))
    sequence = [f"id{rng.integers(40):02d}" for _ in range(300)]  # repeats of known ids and new ones, mixed
    fleet = make_fleet(model, tmp_path, max_devices=cap, checkin_refill_s=0.0, **(ASYNC if mode == "async" else {}))
    c = fleet.coordinator
    t = flood(fleet.broker, sequence)
    with caplog.at_level(logging.WARNING, "fedge.coordinator"):
        fleet.drain()
    admitted, refused = expected(sequence, cap)
    assert set(c.registry) == admitted and len(c.registry) == cap
    assert {d.device_id for d in c.store.load_devices()} == admitted  # nothing stored for a refused id
    assert c.rejections["registry_full"] == refused > 0 and exported(c, "registry_full") == refused
    assert set(c.rejections) == {"registry_full"}
    assert c.metrics.registry.get_sample_value("fedge_devices_registered") == cap
    assert c.metrics.registry.get_sample_value("fedge_devices_max") == cap  # the cap beside it, for a dashboard
    assert replied_to(t) == admitted  # a refused check-in gets no Pace
    logged = [r for r in caplog.records if "registry_full" in r.getMessage()]
    assert 0 < len(logged) < refused  # logged, but not once per refusal (FloodLog)


def _round_commits(fleet) -> None:
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    record = c.tick()  # sync: the round is full and commits
    if record is None:  # async: that tick dispatched the tasks
        fleet.drain()
        record = c.tick()
    assert record is not None and record.committed and record.reports == 3, record


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_known_devices_keep_checking_in_and_training_while_the_registry_is_full(model, tmp_path, mode):
    fleet = make_fleet(model, tmp_path, sizes=(20, 30, 40), max_devices=3, **(ASYNC if mode == "async" else {}))
    c = fleet.coordinator
    assert sorted(c.registry) == ["dev0", "dev1", "dev2"]
    writes = []
    save_device = c.store.save_device
    c.store.save_device = lambda device: (writes.append(device.device_id), save_device(device))[1]
    flood(fleet.broker, [f"fake{i}" for i in range(200)])
    fleet.drain()
    assert c.rejections["registry_full"] == 200 and writes == [] and len(c.registry) == 3
    agent = fleet.agents[1]
    agent.runtime.eligibility = lambda: "too_hot"  # a known device's news still lands
    agent.check_in()
    fleet.drain()
    assert not c.registry["dev1"].eligible and c.registry["dev1"].reason == "too_hot" and writes == ["dev1"]
    agent.runtime.eligibility = lambda: None
    agent.check_in()
    fleet.drain()
    _round_commits(fleet)
    assert c.rejections["registry_full"] == 200  # nothing of theirs was refused


def test_sharded_leader_refuses_new_ids_when_full_and_its_round_still_commits(model, postgres_dsn):
    from tests.coordinator.test_sharding import Cluster  # needs psycopg: imported only here

    c = Cluster(model, postgres_dsn, devices=4, max_devices=4)
    flood(c.broker, [f"fake{i}" for i in range(50)])
    c.pump()
    assert c.leader.rejections["registry_full"] == 50 and exported(c.leader, "registry_full") == 50
    assert sorted(c.leader.registry) == sorted(d.id for d in c.devices)
    assert c.rows("SELECT count(*) FROM devices") == [(4,)]
    assert c.leader.begin_round()
    c.pump()
    rng = np.random.default_rng(3)
    for d in c.devices:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    record = c.leader.tick()
    assert record is not None and record.committed and record.reports == 4, record


def test_the_gate_asks_the_cap_before_the_rate_and_keeps_no_bucket_for_a_refused_id():
    registry = {"a": object(), "b": object()}
    gate = CheckInGate(registry, 2, CheckInLimit(2, 6.0))
    refused = gate.refusal("new", 0.0)
    assert isinstance(refused, RegistryFull) and refused.reason == "registry_full"
    assert "new" not in gate.limit._buckets
    assert [gate.refusal("a", 0.0) for _ in range(2)] == [None, None]  # a known one: its rate, as before
    assert isinstance(gate.refusal("a", 0.0), CheckInTooOften)
    gate.max_devices = 3
    assert gate.refusal("new", 0.0) is None  # room again: the caller registers it


def test_a_registry_restored_over_a_lowered_cap_keeps_every_device_and_says_so_once(caplog):
    registry = {f"d{i}": object() for i in range(5)}
    gate = CheckInGate(registry, 3, CheckInLimit(10, 0.0))
    with caplog.at_level(logging.WARNING, "fedge.coordinator"):
        assert all(gate.refusal(f"d{i}", 0.0) is None for i in range(5))
        assert all(isinstance(gate.refusal(f"x{i}", 0.0), RegistryFull) for i in range(3))
    assert [r.getMessage() for r in caplog.records if "over max_devices" in r.getMessage()] == [
        "the registry holds 5 devices, over max_devices = 3 (restored from the store): all are kept, and every "
        "new device id is refused"]


def _load(tmp_path, text: str) -> CoordinatorConfig:
    path = tmp_path / "c.toml"
    path.write_text(f"[coordinator]\n{text}\n")
    return load_coordinator_config(path)


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_REGISTRY + 1), "1000000000000000000000000000000", '"many"',
                                   "1.5", "true", "inf"])
def test_a_max_devices_that_cannot_be_a_fleet_is_refused_by_name(tmp_path, value):
    assert _load(tmp_path, "max_devices = 70").max_devices == 70  # the key itself is read
    with pytest.raises(ConfigError, match="max_devices"):
        _load(tmp_path, f"max_devices = {value}")


def test_max_devices_loads_at_its_bounds_and_defaults_to_the_largest_round():
    assert CoordinatorConfig().max_devices == MAX_FLEET
    assert CoordinatorConfig(max_devices=MAX_REGISTRY).max_devices == MAX_REGISTRY
    assert CoordinatorConfig(max_devices=1).max_devices == 1
    with pytest.raises(ConfigError, match="max_devices"):  # set in code (simulate), not through a file
        CoordinatorConfig(max_devices=0)


def test_a_cap_no_buffer_or_service_could_live_with_is_refused_by_name_and_a_small_sync_fleet_loads(tmp_path):
    """A sync round asks min(clients_per_round, eligible) devices and commits on fewer, so a cap
    below clients_per_round loads (it was refused). Under central DP an async device gives one
    update per buffer: a cap below buffer_size could never fill one; a secure round begins only
    with its quorum eligible; a service waiting for more devices than the registry may hold would
    wait for good. Each is refused by name (the secure case loaded, and no round ever began)."""
    assert _load(tmp_path, "clients_per_round = 10\nmax_devices = 5").max_devices == 5
    assert _load(tmp_path, 'mode = "async"\nmax_devices = 5').max_devices == 5  # without DP a device gives more
    private = {"mode": "async", "aggregator": "mean", "weighting": "equal", "async_": AsyncConfig(buffer_size=4),
               "privacy": PrivacyConfig(enabled=True, noise_multiplier=1.0)}
    assert CoordinatorConfig(max_devices=4, **private).max_devices == 4
    with pytest.raises(ConfigError, match="max_devices 3 is below async.buffer_size 4 with \\[privacy\\] on"):
        CoordinatorConfig(max_devices=3, **private)
    secure = {"clients_per_round": 10, "aggregator": "mean", "weighting": "equal",  # quorum: ceil(10 / 2)
              "secure_aggregation": SecAggConfig(enabled=True, clip_range=1.0)}
    assert CoordinatorConfig(max_devices=5, **secure).quorum == 5
    with pytest.raises(ConfigError, match="max_devices 4 is below the quorum 5 with secure aggregation on"):
        CoordinatorConfig(max_devices=4, **secure)
    path = tmp_path / "s.toml"
    path.write_text('[service]\nmin_devices = 50\n[coordinator]\nartifacts_dir = "a"\nmax_devices = 20\n')
    with pytest.raises(ConfigError, match="min_devices 50 is above coordinator.max_devices 20"):
        load_service_config(path)
    path.write_text('[service]\nmin_devices = 20\n[coordinator]\nartifacts_dir = "a"\nmax_devices = 20\n')
    assert load_service_config(path).service.min_devices == 20
