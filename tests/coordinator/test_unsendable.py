"""A message of the coordinator's own that the codec refuses (a value out of the wire's range)
is dropped, logged and counted (coordinator/outbound.py), never raised out of begin_round or
tick, where it would end `fedge coordinator serve`. The values config._check_wire and
records._device_clip see are checked at their source; this is the net under whatever they miss."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import MalformedPayload
from tests.coordinator.fleet import make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _sample(fleet, name: str, **labels) -> float:
    value = fleet.coordinator.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_an_unencodable_task_is_dropped_counted_and_the_round_goes_on(model, tmp_path, caplog):
    fleet = make_fleet(model, tmp_path, sizes=(30, 40), min_reports=1, round_deadline_s=60.0)
    out = fleet.coordinator.outbound
    made = out.train_task

    def out_of_range_for_dev0(rnd, device_id, remaining, inline=False):
        task = made(rnd, device_id, remaining, inline)
        if device_id != "dev0":
            return task
        return dataclasses.replace(task, compression=dataclasses.replace(task.compression, clip_norm=1e31))

    out.train_task = out_of_range_for_dev0

    c = fleet.coordinator
    with caplog.at_level(logging.ERROR, logger="fedge.coordinator"):
        assert c.begin_round()  # raised MalformedPayload out of the loop before outbound.encode
        round_id = c.round.ctx.round_id
        with pytest.raises(MalformedPayload):  # the premise: the codec refuses dev0's task
            encode_message(out_of_range_for_dev0(c.round, "dev0", 1.0))
        record = None
        for _ in range(400):
            fleet.drain()
            fleet.clock.advance(1.0)
            record = c.tick()
            if record is not None:
                break
    assert record is not None and record.committed, record
    tasks = [t for t in fleet.tasks() if t.round_id == round_id]
    assert {t.device_id for t in tasks} == {"dev1"}  # dev0's never left
    assert [u.device_id for u in fleet.updates() if u.round_id == round_id] == ["dev1"]
    assert _sample(fleet, "fedge_unsendable_total", kind="TrainTask") >= 1
    assert out.unsendable["TrainTask"] >= 1
    assert any("TrainTask" in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records)

    out.train_task = made  # the value is back in range: the next round reaches both devices
    assert c.begin_round()
    fleet.drain()
    assert {t.device_id for t in fleet.tasks() if t.round_id == c.round.ctx.round_id} == {"dev0", "dev1"}

