"""AsyncCoordinator over the in-memory broker, devices driven by hand: tasks up to the
concurrency limit, every K accepted updates one new model version equal to a plain loop of
FedBuff's step over the wire deltas, stale updates rejected by name (log, metric, Ack), and
a restart mid-buffer that loses no accepted update and counts none twice."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.server import AsyncCoordinator
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.metrics import MAX_DECLINE_REASONS
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import Decline
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, make_fleet, nan_payload, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def fedbuff_oracle(old, updates, staleness, a=0.5):
    """old + Σ n_i (1 + s_i)^-a Δ_i / Σ n_i: a plain loop over the bytes that crossed the wire."""
    total = sum(u.num_examples for u in updates)
    out = {}
    for name, value in old.items():
        acc = np.zeros(value.shape, np.float64)
        for u, s in zip(updates, staleness):
            delta = decompress_update(decode_tensors(u.payload))[name].astype(np.float64)
            acc += u.num_examples * (1.0 + s) ** -a * delta
        out[name] = value.astype(np.float64) + acc / total
    return out


def _fleet(model, tmp_path, n_devices, store=None, **async_kw):
    fleet = make_fleet(model, tmp_path, store=store, mode="async",
                       async_=AsyncConfig(**{"concurrency": n_devices, "buffer_size": 3, "max_staleness": 1,
                                             **async_kw}))
    devices = [ManualDevice(fleet, f"m{i}", 10 * (i + 1)) for i in range(n_devices)]
    fleet.drain()
    assert isinstance(fleet.coordinator, AsyncCoordinator)
    assert fleet.coordinator.begin_round()
    fleet.coordinator.tick()  # dispatch
    fleet.drain()
    return fleet, devices


def _send(fleet, device, delta, update_id="u1"):
    update = device.update(delta, update_id=update_id)
    device.send(encode_message(update))
    fleet.drain()
    return update


def test_buffer_of_k_steps_once_by_fedbuffs_formula_and_stale_updates_are_rejected(model, tmp_path, caplog):
    fleet, devs = _fleet(model, tmp_path, 5)
    c = fleet.coordinator
    shapes = c.shapes
    rng = np.random.default_rng(3)
    assert all(d.task().model_version == 0 for d in devs)  # 5 in flight: concurrency 5
    assert c.machine.in_flight == 5

    v0 = copy_params(c.state.params)
    first = [_send(fleet, d, random_delta(shapes, rng)) for d in devs[:3]]
    record = c.tick()
    assert record is not None and record.committed and record.reports == 3
    assert c.state.version == 1
    assert_params(c.state.params, fedbuff_oracle(v0, first, [0, 0, 0]))

    # The freed slots got tasks on v1; m3 and m4 still train on v0 (staleness 1, accepted with
    # weight 2^-1/2), then a fresh one fills the buffer.
    c.tick()
    fleet.drain()
    assert [d.task().model_version for d in devs] == [1, 1, 1, 0, 0]
    v1 = copy_params(c.state.params)
    second = [_send(fleet, devs[3], random_delta(shapes, rng)), _send(fleet, devs[0], random_delta(shapes, rng), "u2")]
    assert c.state.version == 1 and c.machine.buffered == 2
    second.append(_send(fleet, devs[1], random_delta(shapes, rng), "u2"))
    assert c.state.version == 2
    assert_params(c.state.params, fedbuff_oracle(v1, second, [1, 0, 0]))
    unweighted = fedbuff_oracle(v1, second, [0, 0, 0])  # the oracle has teeth: the weight shows
    assert not np.allclose(c.state.params["head_global.weight"], unweighted["head_global.weight"], atol=1e-7)

    # m4 trained on v0, now two versions behind with max_staleness 1: stale_update, by name.
    with caplog.at_level(logging.INFO):
        _send(fleet, devs[4], random_delta(shapes, rng))
    assert c.rejections["stale_update"] == 1
    assert devs[4].acks()[-1] == (False, "stale_update")
    assert "stale_update" in caplog.text
    metric = c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": "stale_update"})
    assert metric == 1.0
    assert c.metrics.registry.get_sample_value("fedge_async_staleness_count") == 6  # the accepted ones
    assert c.metrics.registry.get_sample_value("fedge_async_staleness_sum") == 1  # one update one version old
    assert c.machine.flight("m4") is None and c.state.version == 2

    # A re-publish of a counted update is a duplicate, acked as accepted, counted once.
    devs[0].send(encode_message(first[0]))
    fleet.drain()
    assert c.rejections["duplicate"] == 1 and c.machine.buffered == 0
    assert devs[0].acks()[-1] == (True, "duplicate")


def test_updates_are_validated_like_sync_and_declines_free_the_slot(model, tmp_path):
    fleet, devs = _fleet(model, tmp_path, 3)
    c = fleet.coordinator
    delta = random_delta(c.shapes, np.random.default_rng(0))
    devs[0].send(encode_message(devs[0].update(delta, payload=nan_payload(delta))))
    fleet.drain()
    assert c.rejections["non_finite"] == 1 and c.machine.flight("m0") is None
    wrong = devs[1].update(random_delta(c.shapes, np.random.default_rng(0)), base_version=5)
    devs[1].send(encode_message(wrong))
    fleet.drain()
    assert c.rejections["wrong_model"] == 1
    task = devs[2].task()
    devs[2].send(encode_message(Decline("m2", task.round_id, task.task_id, "battery_low")))
    fleet.drain()
    assert c.declines["battery_low"] == 1 and c.machine.in_flight == 0 and c.machine.buffered == 0
    # The decliner rests (pace_declined_s) instead of getting a task at the next tick, and is told so.
    devs[2].check_in()
    fleet.drain()
    assert devs[2].paces()[-1].reason == "declined"
    c.tick()  # m0 and m1, refused, rest like the decliner (test_async_boundaries.py says why)
    assert c.machine.in_flight == 0
    fleet.clock.advance(c.config.pace_declined_s)
    c.tick()
    assert c.machine.flight("m0") is not None and c.machine.flight("m1") is not None


def test_restart_mid_buffer_loses_no_accepted_update_and_counts_none_twice(model, tmp_path):
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 4, store=RoundStore(db))
    c = fleet.coordinator
    rng = np.random.default_rng(5)
    v0 = copy_params(c.state.params)
    sent = [_send(fleet, d, random_delta(c.shapes, rng)) for d in devs[:2]]
    assert c.machine.buffered == 2 and c.state.version == 0

    # The process dies: a new coordinator on the same file replays the two durable updates.
    c = fleet.restart(store=RoundStore(db))
    fleet.drain()
    assert c.machine.buffered == 2 and c.machine.in_flight == 2  # m2, m3 still in flight
    devs[0].send(encode_message(sent[0]))  # its Ack was "lost": re-published
    fleet.drain()
    assert c.rejections["duplicate"] == 1 and c.machine.buffered == 2
    sent.append(_send(fleet, devs[2], random_delta(c.shapes, rng)))
    assert c.state.version == 1
    assert_params(c.state.params, fedbuff_oracle(v0, sent, [0, 0, 0]))
    # and once more after the flush: the buffer's rows are committed, never replayed
    c = fleet.restart(store=RoundStore(db))
    assert c.state.version == 1 and c.machine.buffered == 0
    assert_params(c.state.params, fedbuff_oracle(v0, sent, [0, 0, 0]))


def test_a_buffered_payload_whose_bytes_changed_on_disk_stops_the_restart_by_name(model, tmp_path):
    import sqlite3

    from fedge.coordinator.errors import StoreCorrupt

    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 4, store=RoundStore(db))
    _send(fleet, devs[0], random_delta(fleet.coordinator.shapes, np.random.default_rng(5)))
    assert fleet.coordinator.machine.buffered == 1
    with sqlite3.connect(db) as conn:  # one bit of the stored payload, same length
        (payload,) = conn.execute("SELECT payload FROM async_updates").fetchone()
        changed = bytearray(payload)
        changed[len(changed) // 2] ^= 0x01
        conn.execute("UPDATE async_updates SET payload = ?", (bytes(changed),))
    with pytest.raises(StoreCorrupt, match="digest"):
        fleet.restart(store=RoundStore(db))


def _dp_fleet(model, tmp_path, devices: int, buffer_size: int, store=None):
    """An async fleet under central DP: `devices` devices of 10 examples, all dispatched at once;
    the buffer opened."""
    fleet = make_fleet(model, tmp_path, store=store, mode="async", weighting="equal",
                       async_=AsyncConfig(concurrency=devices, buffer_size=buffer_size, max_staleness=5),
                       privacy=PrivacyConfig(enabled=True, target_epsilon=50.0, delta=1e-5, noise_multiplier=1.0,
                                             clip_norm=0.5))
    devs = [ManualDevice(fleet, f"m{i}", 10) for i in range(devices)]
    fleet.drain()
    # One noise key for every such fleet (each would draw its own from the OS), so that a restarted
    # fleet's buffer can be checked bit for bit against a reference that never stopped.
    fleet.coordinator.privacy.noise_key = lambda buffer_id: "a5" * 16
    assert fleet.coordinator.begin_round()
    return fleet, devs


def test_with_central_dp_each_flush_is_one_accounting_event_and_a_device_gives_one_update_per_buffer(model,
                                                                                                      tmp_path):
    db = tmp_path / "state.db"
    fleet, devs = _dp_fleet(model, tmp_path, devices=3, buffer_size=2, store=RoundStore(db))
    c = fleet.coordinator
    rng = np.random.default_rng(1)
    for flush in range(3):
        c.tick()
        fleet.drain()
        sent = set()
        while c.state.version == flush:
            ready = [d for d in devs if c.machine.flight(d.id) is not None and d.id not in sent]
            assert ready, "a buffer must be able to fill from distinct devices"
            _send(fleet, ready[0], random_delta(c.shapes, rng, scale=0.001), f"u{flush}")
            sent.add(ready[0].id)
            c.tick()  # a device that gave to this buffer gets no new task until it flushes
            fleet.drain()
            assert all(c.machine.flight(d) is None for d in sent if c.state.version == flush)
    ledger = RoundStore(db).privacy_ledger()
    assert [(p["population"], p["cohort"], p["expected_cohort"]) for p in ledger] == [(2, 2, 2)] * 3
    assert len(RoundStore(db).round_records()) == 3 == c.state.version


def test_a_dp_buffer_larger_than_the_fleet_says_why_it_waits(model, tmp_path, caplog):
    """With central DP a device gives one update per buffer: K = 4 from 2 devices never fills.
    It once waited with nothing in the log (a helper's fleet: K = 8, 4 devices)."""
    fleet, devs = _dp_fleet(model, tmp_path, devices=2, buffer_size=4)
    c = fleet.coordinator
    c.tick()
    fleet.drain()
    rng = np.random.default_rng(2)
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        for i, d in enumerate(devs):
            _send(fleet, d, random_delta(c.shapes, rng, scale=0.001), f"u{i}")
            c.tick()
            fleet.drain()
        for _ in range(3):
            c.tick()
    waits = [r.message for r in caplog.records if "waits with 2 of K = 4 updates" in r.message]
    assert len(waits) == 1 and "under central DP" in waits[0], caplog.text  # once per buffer
    assert c.state.version == 0


def test_an_open_round_of_the_other_mode_is_refused_by_name_not_dropped(model, tmp_path):
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 3, store=RoundStore(db))
    _send(fleet, devs[0], random_delta(fleet.coordinator.shapes, np.random.default_rng(0)))
    sync = dataclasses.replace(fleet.coordinator.config, mode="sync")
    with pytest.raises(ConfigError, match="open async buffer"):
        fleet.restart(store=RoundStore(db), config=sync)

    db2 = tmp_path / "sync.db"
    fleet = make_fleet(model, tmp_path, sizes=(10, 20), store=RoundStore(db2))
    assert fleet.coordinator.begin_round()
    asyn = dataclasses.replace(fleet.coordinator.config, mode="async")
    with pytest.raises(ConfigError, match="open sync round"):
        fleet.restart(store=RoundStore(db2), config=asyn)


def test_one_fast_device_cannot_fill_a_buffer_while_the_others_train(model, tmp_path):
    """Without DP a device that answered at once used to get the next free slot, again and again,
    and supplied every update of a buffer: the median of its own updates is its own delta. Now a
    device gives at most ceil(K / eligible devices) updates to one buffer (here 1), so the
    buffer waits for the others."""
    fleet = make_fleet(model, tmp_path, mode="async", aggregator="median",
                       async_=AsyncConfig(concurrency=5, buffer_size=4, max_staleness=5))
    evil = ManualDevice(fleet, "evil", 10)
    honest = [ManualDevice(fleet, f"h{i}", 10) for i in range(4)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    c.tick()
    fleet.drain()
    chosen = {k: np.full(s, 0.05, np.float32) for k, s in c.shapes.items()}
    for n in range(4):  # the attack: answer at once, check in for the next task, repeat
        if c.machine.flight("evil") is not None:
            _send(fleet, evil, chosen, f"u{n}")
        c.tick()
        fleet.drain()
        fleet.clock.advance(31.0)
        evil.check_in()
        fleet.drain()
    assert c.state.version == 0 and c.machine.buffered == 1  # its one update waits for three others
    assert c.machine.flight("evil") is None
    rng = np.random.default_rng(5)
    for i, h in enumerate(honest[:3]):
        _send(fleet, h, random_delta(c.shapes, rng, scale=0.001), f"h{i}")
    assert c.state.version == 1  # the buffer filled from four devices


def test_a_small_fleet_still_fills_its_buffers_each_device_its_fair_share(model, tmp_path):
    fleet, devs = _fleet(model, tmp_path, 2, buffer_size=3, max_staleness=5)  # 2 devices, K = 3: 2 each
    c = fleet.coordinator
    rng = np.random.default_rng(6)
    sent = {d.id: 0 for d in devs}
    for n in range(6):
        ready = [d for d in devs if c.machine.flight(d.id) is not None]
        if not ready:
            break
        _send(fleet, ready[0], random_delta(c.shapes, rng, scale=0.001), f"u{n}")
        sent[ready[0].id] += 1
        c.tick()
        fleet.drain()
        if c.state.version == 1:
            break
    assert c.state.version == 1 and max(sent.values()) <= 2


def test_a_device_that_answers_quickly_receives_its_next_task(model, tmp_path):
    """The 30 s resend throttle was kept per device: the task dispatched after a quick answer
    looked like a resend of the last one and was never sent, holding a slot idle."""
    from fedge.edge_runtime.kernel.protocol import TrainTask

    fleet, (fast, _slow) = _fleet(model, tmp_path, 2, buffer_size=5, max_staleness=5)
    c = fleet.coordinator
    first = fast.task()
    fleet.clock.advance(5.0)
    _send(fleet, fast, {k: np.zeros(s, np.float32) for k, s in c.shapes.items()})
    c.tick()
    fleet.drain()
    flight = c.machine.flight(fast.id)
    assert flight is not None and flight.task_id != first.task_id
    fast.receive()
    assert flight.task_id in [m.task_id for m in fast.inbox if isinstance(m, TrainTask)]


def test_devices_that_went_away_hold_a_buffer_back_for_pace_max_s_at_most(model, tmp_path):
    """Registered devices that stopped answering counted toward the fair share for good: with 8
    of 10 silent and K = 4, the two left could give one update each and the buffer never filled.
    Once the silent ones' tasks expire and pace_max_s passes without a word from them, the two
    give two each."""
    fleet, devs = _fleet(model, tmp_path, 10, buffer_size=4, max_staleness=5)
    c = fleet.coordinator
    live, rng = devs[:2], np.random.default_rng(8)
    for i, d in enumerate(live):
        _send(fleet, d, random_delta(c.shapes, rng, scale=0.001), f"a{i}")
    c.tick()
    fleet.drain()
    assert c.machine.buffered == 2 and all(c.machine.flight(d.id) is None for d in live)  # 1 each for now
    fleet.clock.advance(c.config.round_deadline_s + c.config.pace_max_s + c.config.pace_jitter_s + 1)
    for d in live:
        d.check_in()
    fleet.drain()
    c.tick()
    fleet.drain()
    for i, d in enumerate(live):
        _send(fleet, d, random_delta(c.shapes, rng, scale=0.001), f"b{i}")
    assert c.state.version == 1


def test_a_permanent_decline_parks_the_device_until_it_checks_in_with_something_new(model, tmp_path):
    """Async mode once only rested a device that declined bad_dataset (pace_declined_s) and gave
    it a task again after each rest, for good; sync mode parks it (coordinator/backoff.py)."""
    fleet, devs = _fleet(model, tmp_path, 2)
    c = fleet.coordinator
    task = devs[1].task()
    devs[1].send(encode_message(Decline("m1", task.round_id, task.task_id, "bad_dataset")))
    fleet.drain()
    assert c.registry["m1"].parked == "bad_dataset" and c.eligible_devices() == ["m0"]
    fleet.clock.advance(10 * c.config.pace_declined_s)  # long past its rest
    devs[1].check_in()  # the check-in it sent before: nothing new
    fleet.drain()
    c.tick()
    fleet.drain()
    assert c.machine.flight("m1") is None and devs[1].paces()[-1].reason == "ineligible"
    devs[1].n += 1  # new data: a check-in that says something new
    devs[1].check_in()
    fleet.drain()
    c.tick()
    assert c.registry["m1"].parked == "" and c.machine.flight("m1") is not None


def test_device_chosen_decline_reasons_cannot_grow_the_async_tally(model, tmp_path):
    """As in sync mode (test_metrics.py): 64 reasons of the devices' own, then "other"."""
    fleet, devs = _fleet(model, tmp_path, 1)
    c = fleet.coordinator
    for i in range(MAX_DECLINE_REASONS + 5):
        task = devs[0].task()
        devs[0].send(encode_message(Decline("m0", task.round_id, task.task_id, f"made-up-{i}")))
        fleet.drain()
        fleet.clock.advance(2 * c.config.pace_declined_s)  # past its rest
        c.tick()
        fleet.drain()
    assert sum(c.declines.values()) == MAX_DECLINE_REASONS + 5
    assert len(c.declines) == MAX_DECLINE_REASONS + 1 and c.declines["other"] == 5
