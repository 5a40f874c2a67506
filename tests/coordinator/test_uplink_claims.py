"""What a device claims about its own bytes is a claim: an Update's dense_bytes (what it would
cost as dense fp32, for the reports) is counted up to the model's size, so one message claiming
2^62 cannot make a round's record say anything (records.count_uplink)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_claimed_dense_size_counts_at_most_the_models(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(), clients_per_round=2, min_reports=2)
    pi, _other = ManualDevice(fleet, "pi", 10), ManualDevice(fleet, "pj", 10)  # the round waits for pj
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    update = pi.update(random_delta(c.shapes, np.random.default_rng(0)))
    liar = dataclasses.replace(update, dense_bytes=2**62)
    pi.send(encode_message(liar))
    fleet.drain()
    assert c.round is not None and c.rejections == {}  # accepted: the claim is in range, and only a claim
    params = sum(int(np.prod(s)) for s in c.shapes.values())
    assert c.dense_limit == 8 * params
    assert c.round.bytes_up_dense == len(encode_message(liar)) - len(liar.payload) + 8 * params
