"""SIGHUP reloads the coordinator's identity directory (coordinator/secagg/reload.py): a device
provisioned after the start was left out of every round until the coordinator restarted. Now the
loop reads the file again when the flag is set, between messages: the new device is selected from
the next round, an open round keeps the map it was selected with, and a file broken meanwhile keeps
the old map, logged and counted, without stopping anything."""

import dataclasses
import json
import logging
import threading

import numpy as np

from fedge.coordinator.loop import CoordinatorLoop
from fedge.edge_runtime.kernel.secagg.identity_files import load_directory
from tests.coordinator.fleet import copy_params, make_fleet
from tests.secagg.fleet_round import SECURE, SETTINGS, _expected_mean, _flat, _run_round, hand_out, provision

SIX = (30, 30, 30, 30, 30, 30)
IDS = [f"dev{i}" for i in range(len(SIX))]


def _fleet(model, tmp_path):
    """Six devices with identities; the coordinator's directory file lacks dev1 at the start."""
    privates, path = provision(IDS, tmp_path)
    everyone = json.loads(path.read_text())
    path.write_text(json.dumps({d: k for d, k in everyone.items() if d != "dev1"}))
    checked = dataclasses.replace(SECURE, directory_file=str(path))
    fleet = make_fleet(model, tmp_path, sizes=SIX, min_reports=3, **{**SETTINGS, "secure_aggregation": checked})
    hand_out(fleet, privates, {d: bytes.fromhex(k) for d, k in everyone.items()})  # the devices know dev1
    return fleet, path, everyone


def _reloads(c, result: str) -> float:
    return c.metrics.registry.get_sample_value("fedge_secagg_directory_reloads_total", {"result": result})


def _loop_begins_a_round(c, asked: threading.Event) -> tuple[str, ...]:
    """Run the coordinator loop until it begins a round; the devices the round selected."""
    begun = []
    loop = CoordinatorLoop(c, directory_reload=asked, poll_s=0.0,
                           on_begin=lambda machine: (begun.append(machine.selected), loop.stop()))
    loop.run()
    assert begun, "the loop began no round"
    return tuple(begun[0])


def _finish_round(fleet):
    """Drive the open round to its close, as fleet_round._run_round does after begin_round."""
    c = fleet.coordinator
    for _ in range(40):
        fleet.drain()
        if (record := c.tick()) is not None:
            return record
        fleet.clock.advance(1.0 if c.round.machine.stage_full else SECURE.stage_deadline_s + 1)
    raise AssertionError("the round never closed")


def test_a_device_added_to_the_file_is_selected_from_the_next_round_after_the_flag(model, tmp_path,
                                                                                   caplog):  # noqa: F811
    """Round 1 selects the five listed devices. The file gains dev1 and the flag is set (SIGHUP):
    the loop reads the file before its next selection, which selects all six, and the round
    commits their mean. The reload is logged (1 added, 0 removed) and counted ok."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, path, everyone = _fleet(model, tmp_path)
    c = fleet.coordinator
    first = _run_round(fleet)
    assert first.committed and first.selected == 5, first.why
    path.write_text(json.dumps(everyone))  # `fedge provision identity --directory` added dev1
    asked = threading.Event()
    assert set(_loop_begins_a_round(c, threading.Event())) == set(IDS) - {"dev1"}  # no flag: the old map
    _finish_round(fleet)
    asked.set()
    old = copy_params(c.state.params)
    assert set(_loop_begins_a_round(c, asked)) == set(IDS)
    assert not asked.is_set()  # applied once
    record = _finish_round(fleet)
    assert record.committed and record.reports == 6, record.why
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), _expected_mean(fleet, set(IDS)),
                               rtol=0, atol=1e-6)
    assert c.shell.identities == load_directory(path)
    assert (_reloads(c, "ok"), _reloads(c, "failed")) == (1, 0)
    said = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
    assert len(said) == 1 and "6 identities, 1 added, 0 removed, 0 re-keyed" in said[0], said
    assert c.metrics.registry.get_sample_value("fedge_secagg_unlisted_devices") == 0


def test_a_broken_file_at_reload_keeps_the_old_map_and_counts_failed(model, tmp_path, caplog):  # noqa: F811
    """The file is broken (half written, then emptied) when the flag is set: the loop logs the file
    and the error, counts failed, keeps the five identities, and the next round runs with them."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, path, _ = _fleet(model, tmp_path)
    c = fleet.coordinator
    before = dict(c.shell.identities)
    asked = threading.Event()
    for broken in ('{"dev0": "ab', "{}"):
        path.write_text(broken)
        asked.set()
        assert set(_loop_begins_a_round(c, asked)) == set(IDS) - {"dev1"}
        assert c.shell.identities == before
        record = _finish_round(fleet)
        assert record.committed and record.reports == 5, record.why
    assert (_reloads(c, "ok"), _reloads(c, "failed")) == (0, 2)
    said = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(said) == 2 and all(str(path) in s and "5 identities read before" in s for s in said), said
    assert "names no device" in said[1]


def test_an_open_round_keeps_the_directory_it_was_selected_with(model, tmp_path):  # noqa: F811
    """A reload while a secure round is open (dev3 removed from the file) does not reach that
    round: its key checks use the map it was selected with, so dev3's advertisement still counts
    and the round commits all five; the next selection leaves dev3 out."""
    fleet, path, everyone = _fleet(model, tmp_path)
    c = fleet.coordinator
    asked = threading.Event()
    assert c.begin_round()
    path.write_text(json.dumps({d: k for d, k in everyone.items() if d not in ("dev1", "dev3")}))
    asked.set()
    CoordinatorLoop(c, directory_reload=asked)._reload_if_asked()
    assert "dev3" not in c.shell.identities
    record = _finish_round(fleet)
    assert record.committed and record.reports == 5 and not c.rejections, (record.why, dict(c.rejections))
    assert set(_loop_begins_a_round(c, threading.Event())) == set(IDS) - {"dev1", "dev3"}
