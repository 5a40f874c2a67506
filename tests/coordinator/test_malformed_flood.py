"""10,000 malformed updates against a live round: each refused with its exact named reason,
memory flat, and the round still commits the genuine updates afterwards.

The flood runs over the in-memory broker with the SQLite store on, so the stale-round path
(which looks the key up among committed rounds) hits the database every time.
"""

from __future__ import annotations

import dataclasses
import gc
from collections import Counter

import numpy as np
import psutil
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import Ack, Update, all_devices_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.coordinator.fleet import (
    ManualDevice,
    assert_params,
    bad_shape_payload,
    copy_params,
    decoded,
    fedavg_oracle,
    make_fleet,
    nan_payload,
    out_of_range_index_payload,
    random_delta,
    reframe,
)
from tests.tiny_model import build_tiny_model

MAX_BYTES = 4096
PER_KIND = 1000
WARM_UP_PER_KIND = 50


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


class Flood:
    """Crafts one bad message of each kind; `i` varies the bytes so no two are identical."""

    def __init__(self, a: ManualDevice, b: ManualDevice, good_a: Update, good_b: Update, shapes, rng):
        self.a, self.b, self.good_a, self.good_b, self.rng = a, b, good_a, good_b, rng
        bad = decoded(good_b)
        self.payloads = {
            "wrong_shape": bad_shape_payload(bad),
            "bad_index": out_of_range_index_payload(bad),
            "nan": nan_payload(bad),
            "inf": nan_payload(bad, float("inf")),
        }
        self.conflicting = dataclasses.replace(good_a, payload=encode_dense(random_delta(shapes, rng)))

    # kind -> (expected reason, sender, bytes)
    def make(self, kind: str, i: int) -> tuple[str, ManualDevice, bytes]:
        b, good = self.b, self.good_b
        if kind == "truncated":
            return "truncated", b, encode_message(dataclasses.replace(good, update_id=f"t{i}"))[: -1 - i % 200]
        if kind == "random_bytes":
            return "malformed", b, b"XX" + self.rng.bytes(11 + i % 500)  # never the b"FDGM" magic
        if kind == "wrong_version":
            return "wrong_version", b, reframe(encode_message(dataclasses.replace(good, update_id=f"v{i}")), 2 + i % 50)
        if kind == "wrong_shape":
            return "bad_shape", b, self._update(f"s{i}", self.payloads["wrong_shape"])
        if kind == "bad_index":
            return "bad_shape", b, self._update(f"x{i}", self.payloads["bad_index"])
        if kind == "non_finite":
            return "non_finite", b, self._update(f"n{i}", self.payloads["nan" if i % 2 else "inf"])
        if kind == "oversize":
            metrics = {f"m{k}": float(k) for k in range(300 + i % 50)}
            padded = dataclasses.replace(good, update_id=f"o{i}", metrics=metrics)
            return "oversize", b, encode_message(padded)
        if kind == "stale_round":
            stale = dataclasses.replace(good, update_id=f"r{i}", round_id=good.round_id + 1 + i % 7)
            return "stale_round", b, encode_message(stale)
        if kind == "duplicate":
            return "duplicate", self.a, encode_message(self.good_a)
        if kind == "conflicting_duplicate":
            return "conflicting_duplicate", self.a, encode_message(self.conflicting)
        raise KeyError(kind)

    def _update(self, update_id: str, payload: bytes) -> bytes:
        return encode_message(dataclasses.replace(self.good_b, update_id=update_id, payload=payload))


KINDS = ("truncated", "random_bytes", "wrong_version", "wrong_shape", "bad_index", "non_finite", "oversize",
         "stale_round", "duplicate", "conflicting_duplicate")


def _inject(fleet, flood: Flood, per_kind: int, rng, acks: Counter) -> Counter:
    """Send per_kind messages of every kind in a shuffled order; returns the expected reasons."""
    order = rng.permutation(np.repeat(np.arange(len(KINDS)), per_kind))
    expected: Counter[str] = Counter()
    for start in range(0, len(order), 500):
        for n, k in enumerate(order[start:start + 500]):
            reason, sender, payload = flood.make(KINDS[k], start + n)
            expected[reason] += 1
            sender.send(payload)
        while fleet.coordinator.pump(0.0):
            pass
        while (msg := flood.a.t.receive(0.0)) is not None:
            ack = decode_message(msg.payload)
            if isinstance(ack, Ack):
                acks[(ack.accepted, ack.reason)] += 1
        flood.b.discard()
    return expected


def test_ten_thousand_malformed_updates_are_refused_by_name_and_the_round_still_commits(model, tmp_path):
    store = RoundStore(tmp_path / "state.db")
    fleet = make_fleet(model, tmp_path, clients_per_round=3, min_reports=3, max_update_bytes=MAX_BYTES, store=store)
    fleet.spy.unsubscribe(all_devices_topic("update"))  # the spy would keep every flooded message
    a, b, c = (ManualDevice(fleet, d, n) for d, n in (("a", 7), ("b", 19), ("c", 4)))
    fleet.drain()
    coordinator = fleet.coordinator
    old = copy_params(coordinator.state.params)
    shapes = {k: v.shape for k, v in old.items()}
    rng = np.random.default_rng(2024)
    assert coordinator.begin_round()
    fleet.drain()
    good = {m.id: m.update(random_delta(shapes, rng), update_id=f"good-{m.id}") for m in (a, b, c)}
    a.send(encode_message(good["a"]))  # counted first, so duplicates and conflicts of it can follow
    fleet.drain()
    assert a.acks() == [(True, "")]
    assert len(encode_message(good["b"])) < MAX_BYTES
    flood = Flood(a, b, good["a"], good["b"], shapes, rng)

    acks: Counter = Counter()
    expected = _inject(fleet, flood, WARM_UP_PER_KIND, rng, acks)
    before = _rss()
    expected += _inject(fleet, flood, PER_KIND, rng, acks)
    grown = _rss() - before

    assert sum(expected.values()) == len(KINDS) * (PER_KIND + WARM_UP_PER_KIND)
    assert coordinator.rejections == expected
    assert expected["bad_shape"] == 2 * (PER_KIND + WARM_UP_PER_KIND)
    assert grown < 50 << 20, f"RSS grew by {grown / 2**20:.1f} MB"
    # The device whose key was reused was told each time: accepted for a duplicate, refused for a conflict.
    n = PER_KIND + WARM_UP_PER_KIND
    assert acks == {(True, "duplicate"): n, (False, "conflicting_duplicate"): n}
    text = generate_latest(coordinator.metrics.registry).decode()
    counted = {s.labels["reason"]: s.value for f in text_string_to_metric_families(text) if f.name == "fedge_rejections"
               for s in f.samples if s.name == "fedge_rejections_total"}
    assert {k: v for k, v in counted.items() if v} == expected  # the other named reasons export 0

    # Still serving: the genuine updates of b and c are accepted and the round commits them alone.
    assert coordinator.round is not None and coordinator.round.machine.reported == ["a"]
    b.send(encode_message(good["b"]))
    c.send(encode_message(good["c"]))
    fleet.drain()
    assert b.acks()[-1] == (True, "") and c.acks() == [(True, "")]
    record = coordinator.tick()
    assert record.committed and record.reports == 3
    assert_params(coordinator.state.params, fedavg_oracle(old, [good["a"], good["b"], good["c"]]))
    assert store.load_state().version == 1


def test_checks_run_in_the_specified_order(model, tmp_path):
    """size, frame/version, current round, key, shapes, finite values, norm: a message that is
    bad in two ways is refused for the earlier one."""
    fleet = make_fleet(model, tmp_path, clients_per_round=2, max_update_bytes=MAX_BYTES, norm_bound=1.0)
    a, b = ManualDevice(fleet, "a", 3), ManualDevice(fleet, "b", 5)
    fleet.drain()
    fleet.coordinator.begin_round()
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(1)
    good = a.update(random_delta(shapes, rng))
    a.send(encode_message(good))  # a's key is counted now
    fleet.drain()
    huge = random_delta(shapes, rng, scale=10.0)  # norm far above the bound
    fresh = b.update(huge, update_id="fresh")
    cases = [  # (sender, expected reason, message)
        (a, "oversize", reframe(encode_message(dataclasses.replace(good, metrics={f"m{k}": 1.0 for k in range(400)})),
                                9)),
        (a, "wrong_version", reframe(encode_message(dataclasses.replace(good, round_id=99)), 9)),
        (b, "stale_round", encode_message(dataclasses.replace(fresh, round_id=99, payload=nan_payload(huge)))),
        (a, "conflicting_duplicate", encode_message(dataclasses.replace(good, payload=nan_payload(huge)))),
        (b, "bad_shape", encode_message(dataclasses.replace(fresh, payload=bad_shape_payload(huge)))),
        (b, "non_finite", encode_message(dataclasses.replace(fresh, payload=nan_payload(huge)))),
        (b, "norm_bound", encode_message(fresh)),
    ]
    for sender, reason, payload in cases:
        sender.send(payload)
        fleet.drain()
        assert fleet.coordinator.rejections[reason] == 1, reason
    assert sum(fleet.coordinator.rejections.values()) == len(cases)
    assert fleet.coordinator.round.machine.reported == ["a"]


def test_a_wrong_shape_with_a_nan_is_a_bad_shape():
    """Validation order: dtype/shape/index ranges come before finite values."""
    import struct
    import zlib

    import numpy as np

    from fedge.coordinator.errors import BadShape
    from fedge.coordinator.validation import RoundContext, check_contents
    from fedge.edge_runtime.kernel.compress import CompressedTensor
    from fedge.edge_runtime.kernel.protocol import Update
    from fedge.edge_runtime.kernel.update_codec import encode_tensors

    # encode_tensors refuses NaN, so build a finite frame and put the NaN in afterwards.
    frame = bytearray(encode_tensors([CompressedTensor("a", (2,), 32, 0.0, None, np.array([7.0, 1.0], np.float32)),
                                      CompressedTensor("b", (3,), 32, 0.0, None, np.ones(3, np.float32))]))
    at = bytes(frame).index(np.float32(7.0).tobytes())
    frame[at:at + 4] = np.float32(np.nan).tobytes()
    struct.pack_into("<I", frame, len(frame) - 4, zlib.crc32(bytes(frame[:-4])))
    ctx = RoundContext(1, "m", 0, {"d": "t"}, {"a": (2,), "b": (4,)}, 0.0)  # b has the wrong shape
    with pytest.raises(BadShape):
        check_contents(Update("d", 1, "t", "u", "m", 0, 5, bytes(frame)), ctx)
