"""Per-stage thresholds and deadlines of a secure round: each stage waits its own deadline and
needs its own minimum of replies; below it the round is abandoned, nothing is applied, and the
next round runs under a new id."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.secagg.config import SecAggConfig, SecureAggregationConflict
from fedge.coordinator.secagg.stages import secagg_limits
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.secagg.messages import UnmaskRequest, UnmaskResponse
from tests.coordinator.fleet import copy_params, make_fleet
from tests.tiny_model import build_tiny_model

SECURE = SecAggConfig(enabled=True, bits=16, clip_range=0.5)
SIZES = (12, 20, 16, 24, 18)


def _settings(**secagg):
    return dict(secure_aggregation=dataclasses.replace(SECURE, **secagg), weighting="equal",
                compression=CompressionSpec(quant_bits=32, clip_norm=4.0))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _run_round(fleet, silent: str = "", from_stage: int = 0):
    """One round: `silent` stops answering from stage `from_stage` on. The clock moves 1 s per
    step, so a stuck stage closes exactly at its own deadline."""
    c = fleet.coordinator
    agents = list(fleet.agents)
    assert c.begin_round()
    opened = {}  # stage -> (clock when opened, its deadline)
    for _ in range(400):
        if silent and c.round is not None and c.round.machine.stage >= from_stage:
            fleet.agents = [a for a in agents if a.device_id != silent]
        fleet.drain()
        record = c.tick()
        if record is not None:
            fleet.agents = agents
            return record, opened
        opened.setdefault(c.round.machine.stage, (fleet.clock.now(), c.round.machine.deadline))
        fleet.clock.advance(1.0)
    raise AssertionError("the round never closed")


def test_defaults_derive_each_stage_from_the_round_quorum_and_stage_deadline():
    lim = secagg_limits(10, 6, 300.0, SECURE)
    assert [x.quorum for x in lim] == [6, 6, 6, 1]  # unmask: raised to t once the cohort is known
    assert [x.window_s for x in lim] == [300.0, 60.0, 60.0, 60.0]
    own = dataclasses.replace(SECURE, share_min=7, mask_min=8, unmask_min=12, share_deadline_s=5,
                              unmask_deadline_s=9)
    lim = secagg_limits(10, 6, 300.0, own)
    assert [x.quorum for x in lim] == [6, 7, 8, 10]  # capped at the devices a round asks
    assert [x.window_s for x in lim] == [300.0, 5.0, 60.0, 9.0]


@pytest.mark.parametrize("field,value", [("share_min", -1), ("unmask_min", -2), ("mask_min", 1),
                                         ("mask_deadline_s", -1.0), ("unmask_deadline_s", float("inf"))])
def test_bad_stage_settings_are_refused_at_load(field, value):
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(SECURE, **{field: value})


def test_a_stage_minimum_no_round_can_reach_is_refused_by_name():
    with pytest.raises(SecureAggregationConflict) as exc:
        CoordinatorConfig(aggregator="mean", clients_per_round=5, **_settings(mask_min=6))
    assert exc.value.reason == "secagg_stage_min"


def test_the_unmask_threshold_becomes_t_when_the_cohort_is_known(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, **_settings())
    record, _ = _run_round(fleet)
    assert record.committed, record.why
    # 5 devices: complete graph, k = 4, t = 3 (graph.choose_parameters)
    c = fleet.coordinator
    assert c.begin_round()
    while c.round.machine.stage < 1:
        fleet.drain()
        c.tick()
        fleet.clock.advance(1.0)
    assert c.round.machine.limits[3].quorum == 3


@pytest.mark.parametrize("stage,settings", [
    (1, {"share_min": 5}),  # a device silent after advertising: 4 of 5 shared
    (2, {"mask_min": 5}),  # silent after key sharing: 4 masked inputs of the 5 needed
    (3, {"unmask_min": 5}),  # silent in the unmask stage: 4 responders, 5 needed (t = 3 would do)
])
def test_a_stage_below_its_own_minimum_abandons_the_round_and_the_next_runs_under_a_new_id(
        model, tmp_path, stage, settings):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, **_settings(**settings))
    c = fleet.coordinator
    before = copy_params(c.state.params)
    record, _ = _run_round(fleet, silent="dev3", from_stage=stage)
    assert not record.committed
    assert f"< quorum {settings.popitem()[1]}" in record.why
    assert c.state.version == 0  # nothing applied
    for name, value in before.items():
        assert np.array_equal(np.asarray(c.state.params[name]), np.asarray(value))
    sent = [m for m in fleet.wire if isinstance(m, UnmaskResponse)]
    assert sent == [] if stage < 3 else len(sent) == 4
    if stage < 2:
        assert not any(isinstance(m, UnmaskRequest) for m in fleet.wire)
    again, _ = _run_round(fleet)  # every device answers now
    assert again.round_id == record.round_id + 1 and again.committed, again.why
    assert c.state.version == 1


def test_the_same_drop_under_the_derived_minimums_commits(model, tmp_path):
    """The oracle for the test above: with the defaults (quorum 3 of 5, t = 3) one silent
    device at the unmask stage does not stop the round."""
    fleet = make_fleet(model, tmp_path, sizes=SIZES, min_reports=3, **_settings())
    record, _ = _run_round(fleet, silent="dev3", from_stage=3)
    assert record.committed, record.why


def test_each_stage_gets_its_own_deadline(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, min_reports=3,
                       **_settings(share_deadline_s=7, mask_deadline_s=11, unmask_deadline_s=13))
    record, opened = _run_round(fleet, silent="dev3", from_stage=1)  # every later stage waits for it
    assert record.committed, record.why
    assert {s: opened[s][1] - opened[s][0] for s in (1, 2, 3)} == {1: 7.0, 2: 11.0, 3: 13.0}


def test_a_revealed_share_outside_the_field_is_refused_by_name(model, tmp_path):
    """A plain share value is two 8-byte halves, each of which can exceed the prime 2^64 - 59:
    such a value is no field element, and the coordinator refuses the whole answer rather than
    reduce it (this fleet's graph is complete: plain shares, 16 bytes)."""
    fleet = make_fleet(model, tmp_path, sizes=SIZES, **_settings())
    c = fleet.coordinator
    assert c.begin_round()
    while c.round.machine.stage < 3:
        fleet.drain()
        c.tick()
        fleet.clock.advance(1.0)
    device = fleet.agents[0].device_id
    state = c.shell.states[c.round.ctx.round_id]
    owners = len(state.delivered[device])
    bad = UnmaskResponse(device, c.round.ctx.round_id, c.round.ctx.tasks[device], b"\xff" * (16 * owners))
    assert c.shell.admit(c.round, bad, device, 100).reason == "secagg_bad_shares"
    good = UnmaskResponse(device, c.round.ctx.round_id, c.round.ctx.tasks[device], bytes(16 * owners))
    assert c.shell.admit(c.round, good, device, 100) is None  # the same answer inside the field counts
