"""The Coordinator over the in-memory broker, with real devices and hand-driven ones.

Oracles: the committed global params are recomputed from the Update messages a spy
client sees on the wire (old + example-weighted mean of the decoded deltas); rejected
messages must leave no trace in that mean.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import CheckIn, TrainTask, all_devices_topic
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from tests.coordinator.fleet import (
    ManualDevice,
    assert_params,
    bad_shape_payload,
    copy_params,
    decoded,
    fedavg_oracle,
    make_fleet,
    nan_payload,
    random_delta,
    reframe,
)
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


# ---------------------------------------------------------------- (a), (b): real devices


def test_round_commits_the_example_weighted_mean_of_the_wire_deltas(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35))
    old = copy_params(fleet.coordinator.state.params)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()

    assert record is not None and record.committed, record
    assert (record.round_id, record.selected, record.reports) == (1, 3, 3)
    assert fleet.coordinator.state.version == 1
    assert fleet.coordinator.rejections == Counter()
    updates = fleet.updates()
    assert sorted(u.num_examples for u in updates) == [10, 20, 35]
    assert_params(fleet.coordinator.state.params, fedavg_oracle(old, updates))

    # The oracle has teeth: training moved the params, and the weights matter.
    deltas = [decompress_update(decode_tensors(u.payload)) for u in updates]
    assert all(np.abs(d["head_global.weight"]).max() > 1e-4 for d in deltas)
    plain = np.mean([d["head_global.weight"] for d in deltas], axis=0)
    assert not np.allclose(fleet.coordinator.state.params["head_global.weight"],
                           old["head_global.weight"] + plain, rtol=1e-4, atol=1e-6)

    # Every device got its Ack and holds nothing pending.
    assert all(not a.pending for a in fleet.agents)


def test_second_round_trains_from_the_committed_params(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35))
    fleet.coordinator.begin_round()
    fleet.drain()
    fleet.coordinator.tick()
    after_one = copy_params(fleet.coordinator.state.params)
    fleet.wire.clear()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.round_id == 2
    assert {t.model_version for t in fleet.tasks()} == {1}
    assert {u.base_version for u in fleet.updates()} == {1}
    assert_params(fleet.coordinator.state.params, fedavg_oracle(after_one, fleet.updates()))


@pytest.mark.parametrize("model_part_bytes", [0, 256])
def test_personal_params_never_leave_the_device(model, tmp_path, model_part_bytes):
    _, manifest, _ = model
    shared = {p.name for p in manifest.by_role("shared")}
    personal = {p.name for p in manifest.by_role("personal")}
    assert personal and shared
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35), model_part_bytes=model_part_bytes)
    for _ in range(2):
        fleet.coordinator.begin_round()
        fleet.drain()
        assert fleet.coordinator.tick().committed
    assert len(fleet.updates()) == 6 and len(fleet.tasks()) == 6
    for update in fleet.updates():
        names = {t.name for t in decode_tensors(update.payload)}
        assert names == shared
        assert not names & personal
    models = fleet.round_models()
    assert len(models) == (2 if model_part_bytes else 0)  # one per round, for all of its tasks
    for task in fleet.tasks():
        params = models[task.round_model_sha256].params if model_part_bytes else task.params
        assert {t.name for t in decode_tensors(params)} == shared
    assert not set(fleet.coordinator.state.params) & personal


# ---------------------------------------------------------------- (c): rejections


# Each case sends its bad message(s) from m0, and returns whether m0's good update is already in.
# Expected: the rejection reason and the Acks m0 gets for the bad phase.
def _truncated(m0, good, bad, fleet):
    m0.send(encode_message(good)[:-9])


def _malformed(m0, good, bad, fleet):
    m0.send(np.random.default_rng(3).bytes(300))


def _wrong_version(m0, good, bad, fleet):
    m0.send(reframe(encode_message(good), version=2))


def _oversize(m0, good, bad, fleet):
    padded = dataclasses.replace(good, metrics={f"m{i}": float(i) for i in range(600)})
    assert len(encode_message(padded)) > fleet.coordinator.config.max_update_bytes
    m0.send(encode_message(padded))


def _stale_round(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, round_id=good.round_id - 1)))


def _duplicate(m0, good, bad, fleet):
    m0.send(encode_message(good))
    m0.send(encode_message(good))
    return True


def _conflicting(m0, good, bad, fleet):
    m0.send(encode_message(good))
    m0.send(encode_message(bad))  # same update_id, other payload
    return True


def _bad_shape(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, payload=bad_shape_payload(decoded(bad)))))


def _non_finite(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, payload=nan_payload(decoded(bad)))))


def _other_topic(m0, good, bad, fleet):
    m0.send(encode_message(good), on="m1")


CASES = {
    "truncated": (_truncated, []),
    "malformed": (_malformed, []),
    "wrong_version": (_wrong_version, []),
    "oversize": (_oversize, []),
    "stale_round": (_stale_round, [(False, "stale_round")]),
    "duplicate": (_duplicate, [(True, ""), (True, "duplicate")]),
    "conflicting_duplicate": (_conflicting, [(True, ""), (False, "conflicting_duplicate")]),
    "bad_shape": (_bad_shape, [(False, "bad_shape")]),
    "non_finite": (_non_finite, [(False, "non_finite")]),
    "other_device_topic": (_other_topic, []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_update_is_counted_kept_out_of_the_mean_and_service_goes_on(model, tmp_path, case):
    send_bad, expected_acks = CASES[case]
    reason = "stale_round" if case == "other_device_topic" else case
    fleet = make_fleet(model, tmp_path, clients_per_round=2, max_update_bytes=4096)
    m0, m1 = ManualDevice(fleet, "m0", 7), ManualDevice(fleet, "m1", 19)
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(len(case))

    for round_id in (1, 2):
        old = copy_params(fleet.coordinator.state.params)
        assert fleet.coordinator.begin_round()
        fleet.drain()
        d0, d1 = random_delta(shapes, rng), random_delta(shapes, rng)
        good0, good1 = m0.update(d0, update_id=f"r{round_id}"), m1.update(d1, update_id=f"r{round_id}")
        if round_id == 1:
            bad = m0.update(random_delta(shapes, rng, scale=100.0), update_id=f"r{round_id}")
            already_in = send_bad(m0, good0, bad, fleet)
            fleet.drain()
            assert fleet.coordinator.rejections == Counter({reason: 1})
            assert m0.acks() == expected_acks
            assert fleet.coordinator.round is not None  # still open
            if not already_in:
                m0.send(encode_message(good0))
        else:
            m0.send(encode_message(good0))
        m1.send(encode_message(good1))
        fleet.drain()
        record = fleet.coordinator.tick()
        assert record is not None and record.committed and record.round_id == round_id
        assert record.reports == 2
        assert_params(fleet.coordinator.state.params, fedavg_oracle(old, [good0, good1]))

    assert fleet.coordinator.state.version == 2
    assert fleet.coordinator.rejections == Counter({reason: 1})  # nothing else was refused
    assert m1.acks() == [(True, ""), (True, "")]


def _tasked(devices, round_id: int) -> ManualDevice:
    """The device that got a task for round_id."""
    for d in devices:
        d.receive()
        if any(isinstance(m, TrainTask) and m.round_id == round_id for m in d.inbox):
            return d
    raise AssertionError(f"no device got a task for round {round_id}")


def test_late_uplink_bytes_count_toward_the_next_round(model, tmp_path):
    """A late answer that arrives after its round closed (no round open) counts toward the next
    round's bytes_up: stragglers' uploads cost bandwidth too."""
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    m0, m1 = ManualDevice(fleet, "m0", 5), ManualDevice(fleet, "m1", 8)
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(3)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    first = _tasked((m0, m1), 1)
    on_time = encode_message(first.update(random_delta(shapes, rng)))
    first.send(on_time)
    fleet.drain()
    r1 = fleet.coordinator.tick()
    assert r1.committed and r1.bytes_up == len(on_time)

    late = encode_message(dataclasses.replace(first.update(random_delta(shapes, rng)), update_id="late"))
    first.send(late)  # no round is open: refused as stale, but the bytes crossed the uplink
    fleet.drain()
    assert fleet.coordinator.rejections == Counter({"stale_round": 1})
    assert fleet.coordinator.begin_round()
    fleet.drain()
    device = _tasked((m0, m1), 2)
    answer = encode_message(device.update(random_delta(shapes, rng), update_id="r2"))
    device.send(answer)
    fleet.drain()
    r2 = fleet.coordinator.tick()
    assert r2.committed and r2.bytes_up == len(late) + len(answer)
    assert r2.bytes_up_dense > r2.bytes_up - len(late) - len(answer)


# ---------------------------------------------------------------- (d): everyone declines


def test_round_where_everyone_declines_is_abandoned_and_nothing_is_applied(model, tmp_path):
    why = {"now": None}
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35), eligibility=lambda: why["now"])
    assert len(fleet.coordinator.eligible_devices()) == 3  # eligible at check-in
    old = copy_params(fleet.coordinator.state.params)
    why["now"] = "battery_low"

    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()  # the clock never moved: quorum is out of reach early

    assert record is not None and not record.committed
    assert record.round_id == 1 and record.reports == 0 and record.seconds == 0.0
    # Quorum is 2 of 3: the machine closes at the second decline; the third is still counted.
    assert len(record.declines) == 2 and set(record.declines.values()) == {"battery_low"}
    assert fleet.coordinator.declines == Counter({"battery_low": 3})
    assert fleet.coordinator.rejections == Counter()
    assert fleet.coordinator.round is None
    assert fleet.coordinator.next_round_id == 2
    assert fleet.coordinator.state.version == 0
    for name, value in old.items():
        np.testing.assert_array_equal(fleet.coordinator.state.params[name], value)

    # The next round gets a new id and commits once the devices can train again.
    why["now"] = None
    fleet.wire.clear()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.round_id == 2
    assert {t.round_id for t in fleet.tasks()} == {2}
    assert_params(fleet.coordinator.state.params, fedavg_oracle(old, fleet.updates()))


def test_a_restarted_coordinator_hears_from_every_device_without_waiting_for_their_check_in_timer(model, tmp_path):
    """Check-ins are not retained: a coordinator that was down (here: restarted without a store)
    missed them. Its first live Announcement carries a new session, and every device checks in
    at once; announcements of the same session cause no check-ins."""
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35))
    watcher = fleet.broker.connect("watcher")
    watcher.subscribe(all_devices_topic("checkin"))

    def check_ins() -> int:
        n = 0
        while (msg := watcher.receive(0.0)) is not None:
            n += isinstance(decode_message(msg.payload), CheckIn)
        return n

    fleet.coordinator.begin_round()  # announces "training" in the same session
    fleet.drain()
    assert fleet.coordinator.tick().committed
    fleet.drain()
    assert check_ins() == 0
    old_session = fleet.coordinator.session
    fleet.restart()  # no store: the new process knows no device
    assert fleet.coordinator.session != old_session and not fleet.coordinator.registry
    fleet.drain()
    assert check_ins() == 3
    assert sorted(fleet.coordinator.registry) == ["dev0", "dev1", "dev2"]
    assert fleet.coordinator.begin_round()
