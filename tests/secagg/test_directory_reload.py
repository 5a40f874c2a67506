"""SIGHUP reloads the coordinator's identity directory (coordinator/secagg/reload.py): a device
provisioned after the start was left out of every round until the coordinator restarted. Now the
loop reads the file again when the flag is set, between messages: the new device is selected from
the next round, an open round keeps the map it was selected with, and a file broken meanwhile keeps
the old map, logged and counted, without stopping anything."""

import dataclasses
import json
import logging
import os
import signal
import threading

import numpy as np

from fedge.coordinator import service as service_module
from fedge.coordinator.loop import CoordinatorLoop
from fedge.coordinator.secagg.config import identities_of
from fedge.edge_runtime.kernel.secagg.identity_files import load_directory
from tests.coordinator.fleet import copy_params, make_fleet
from tests.coordinator.test_sharding_secagg import SIZES as SHARDED_SIZES
from tests.coordinator.test_sharding_secagg import _expected_delta
from tests.coordinator.test_sharding_secagg import _fleet as _sharded_fleet
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


def test_a_sharded_leader_selects_the_added_device_and_its_groups_check_it(model, tmp_path,  # noqa: F811
                                                                          postgres_dsn):
    """A sharded leader's live shell is the ShardedSecAggShell (it replaced the first shell and took
    its map): the reload reaches it, dev1 is selected at the next round, its shard group verifies
    its advertisement with the new map, and the round commits all twelve devices' merged sum."""
    from fedge.coordinator.sharding.secure import ShardedSecAggShell

    ids = [f"dev{i}" for i in range(len(SHARDED_SIZES))]
    privates, path = provision(ids, tmp_path)
    everyone = json.loads(path.read_text())
    path.write_text(json.dumps({d: k for d, k in everyone.items() if d != "dev1"}))
    fleet = _sharded_fleet(model, tmp_path, postgres_dsn,
                           secure_aggregation=dataclasses.replace(SECURE, directory_file=str(path)))
    hand_out(fleet, privates, {d: bytes.fromhex(k) for d, k in everyone.items()})
    c = fleet.coordinator
    assert isinstance(c.shell, ShardedSecAggShell) and "dev1" not in c.shell.identities
    path.write_text(json.dumps(everyone))
    asked = threading.Event()
    asked.set()
    old = copy_params(c.state.params)
    assert set(_loop_begins_a_round(c, asked)) == set(ids)
    agents = list(fleet.agents)
    record = _finish_round(fleet)
    assert record.committed and record.reports == len(ids), (record.why, dict(c.rejections))
    assert not c.rejections, dict(c.rejections)
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), _expected_delta(agents, set(ids)),
                               rtol=0, atol=1e-6)


def test_the_sighup_handler_only_sets_the_loops_flag_and_only_on_a_secure_leader(tmp_path, monkeypatch):
    """On a leader with a directory, SIGHUP's handler sets the flag _serve hands the loop and reads
    nothing (a file broken since the start does not raise in it, and the preloaded map stays for a
    standby's takeover, whose loop then reads the file with the flag still set). Without a
    directory, with secure aggregation off, or on a worker, it is on_hangup (logged, ignored)."""
    _, path = provision(["dev0", "dev1"], tmp_path)
    handlers, served = {}, []
    monkeypatch.setattr(service_module.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(service_module, "_serve", lambda cfg, lease, stopping, loops, reload: served.append(reload))
    monkeypatch.setattr(service_module, "run_worker", lambda *a: None)
    config = tmp_path / "service.toml"

    def run(secure: str, directory: str, role: str = "leader"):
        config.write_text(f'[coordinator]\nartifacts_dir = "a"\nstate_db = ""\nclients_per_round = 6\n'
                          f'min_reports = 3\n[coordinator.secure_aggregation]\nenabled = {secure}\n'
                          f'clip_range = 0.5\ndirectory_file = "{directory}"\n')
        cfg = service_module.load_service_config(config)
        service_module.run_service(cfg, role)
        return cfg, handlers[signal.SIGHUP]

    cfg, on_hup = run("true", str(path))
    read = identities_of(cfg.coordinator.secure_aggregation)
    path.write_text("{")  # broken after the start
    assert not served[-1].is_set()
    on_hup(signal.SIGHUP, None)
    assert served[-1].is_set()
    assert identities_of(cfg.coordinator.secure_aggregation) == read  # nothing read in the handler
    for secure, directory, role in (("true", "", "leader"), ("false", str(path), "leader"),
                                    ("true", str(path), "worker")):
        path.write_text(json.dumps({"dev0": "00" * 32}))
        assert run(secure, directory, role)[1] is service_module.on_hangup


def test_a_reload_that_re_keys_a_device_sidelined_for_a_bad_signature_lets_it_in_at_once(model, tmp_path,
                                                                                       caplog):  # noqa: F811
    """dev1 signs with a key the directory lacks: refused, it sits out 600 s. The operator gives it
    a new identity and the directory its new key, then SIGHUP: the next selection, well inside
    the 600 s, draws dev1 again, and the round commits all six (a re-keyed device waited out its
    doubled wait, up to a day, before). A device whose key did not change stays out."""
    from fedge.edge_runtime.kernel.secagg import identity
    from tests.secagg.test_identity import _bad_signer_fleet

    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, ids = _bad_signer_fleet(model, tmp_path)
    c = fleet.coordinator
    first = fleet.clock.now()
    assert _run_round(fleet).committed
    assert "dev1" in c.sidelined.active(fleet.clock.now())
    path = tmp_path / "identities.json"
    unchanged = threading.Event()
    unchanged.set()  # a reload of the same file: nothing re-keyed, dev1 stays out
    assert "dev1" not in _loop_begins_a_round(c, unchanged)
    _finish_round(fleet)
    private, public = identity.generate_identity()
    agent = next(a for a in fleet.agents if a.device_id == "dev1")
    agent.secagg.identity_private = private
    agent.secagg.directory["dev1"] = public  # every device's copy of the directory (one dict, hand_out)
    path.write_text(json.dumps({**json.loads(path.read_text()), "dev1": public.hex()}))
    asked = threading.Event()
    asked.set()
    assert fleet.clock.now() < first + 600
    assert set(_loop_begins_a_round(c, asked)) == set(ids)
    record = _finish_round(fleet)
    assert record.committed and record.reports == 6, record.why
    assert any("1 device(s) left out for a bad signature are selectable again" in r.getMessage() and "dev1" in
               r.getMessage() for r in caplog.records)


def test_devices_reload_their_directory_too_so_a_newly_provisioned_device_joins_their_rounds(model, tmp_path,
                                                                                             caplog):  # noqa: F811
    """dev1 is provisioned while the fleet runs: the directory file gains it, and every device
    and the coordinator reload (SIGHUP). The devices' copies, read only at start before, lacked
    dev1, so each declined the whole round that selected it; reloaded, the round commits all six.
    A broken file at a device's reload keeps its old directory."""
    from fedge.edge_runtime.run import reload_directory as device_reload

    caplog.set_level(logging.INFO, "fedge.device")
    fleet, path, everyone = _fleet(model, tmp_path)
    without = {d: bytes.fromhex(k) for d, k in everyone.items() if d != "dev1"}
    for agent in fleet.agents:
        agent.secagg.directory = dict(without)  # what every device read at its start
    c = fleet.coordinator
    assert _run_round(fleet).committed
    path.write_text("{")  # half copied
    assert not device_reload(fleet.agents[0].secagg, str(path), "dev0")
    assert fleet.agents[0].secagg.directory == without
    path.write_text(json.dumps(everyone))
    for agent in fleet.agents:
        assert device_reload(agent.secagg, str(path), agent.device_id)
    asked = threading.Event()
    asked.set()
    old = copy_params(c.state.params)
    assert set(_loop_begins_a_round(c, asked)) == set(IDS)
    record = _finish_round(fleet)
    assert record.committed and record.reports == 6, record.why
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), _expected_mean(fleet, set(IDS)),
                               rtol=0, atol=1e-6)
    said = [r.getMessage() for r in caplog.records if r.name == "fedge.device" and "SIGHUP" in r.getMessage()]
    assert len(said) == 7 and "kept the identity directory read before (5 identities)" in said[0]
    assert all("6 identities, 1 added, 0 removed, 0 re-keyed" in line for line in said[1:])


def test_sighup_on_a_device_with_an_identity_reloads_its_directory(tmp_path):
    from types import SimpleNamespace

    from fedge.edge_runtime.run import install_reload

    path = tmp_path / "identities.json"
    path.write_text(json.dumps({"dev0": "11" * 32, "dev1": "22" * 32}))
    reloaded = threading.Event()
    agent = SimpleNamespace(runtime=SimpleNamespace(device_id="dev0", replace_data=lambda data: None),
                            secagg=SimpleNamespace(directory={}), check_in_soon=reloaded.set)
    np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 3)), y_test=np.zeros(2, np.int64))
    previous = signal.getsignal(signal.SIGHUP)
    try:
        install_reload(agent, str(tmp_path / "d.npz"), directory_file=str(path))
        os.kill(os.getpid(), signal.SIGHUP)
        assert reloaded.wait(10)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert agent.secagg.directory == {"dev0": bytes.fromhex("11" * 32), "dev1": bytes.fromhex("22" * 32)}


def test_a_sighup_that_lands_inside_the_loops_clear_neither_hangs_nor_is_lost(tmp_path, monkeypatch):
    """The handler runs in the main thread between two bytecodes, and so does the loop's clear():
    with a threading.Event the handler's set() waited for the lock the interrupted clear() held,
    forever. Here the handler fires before every line run inside clear() (as a signal may), on a
    thread that must finish. No SIGHUP is lost: the loop reads the file after clear()."""
    import sys

    _, path = provision(["dev0", "dev1"], tmp_path)
    handlers, served = {}, []
    monkeypatch.setattr(service_module.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(service_module, "_serve", lambda cfg, lease, stopping, loops, reload: served.append(reload))
    config = tmp_path / "service.toml"
    config.write_text(f'[coordinator]\nartifacts_dir = "a"\nstate_db = ""\nclients_per_round = 6\nmin_reports = 3\n'
                      f'[coordinator.secure_aggregation]\nenabled = true\nclip_range = 0.5\n'
                      f'directory_file = "{path}"\n')
    service_module.run_service(service_module.load_service_config(config))
    flag, on_hup = served[-1], handlers[signal.SIGHUP]
    on_hup(signal.SIGHUP, None)

    def inside_clear(frame, event, arg):
        if frame.f_code.co_name == "clear" and event == "call":
            def per_line(frame, event, arg):
                if event == "line":
                    on_hup(signal.SIGHUP, None)
                return per_line
            return per_line
        return None

    def loop_turn():
        sys.settrace(inside_clear)
        try:
            flag.clear()
        finally:
            sys.settrace(None)

    turn = threading.Thread(target=loop_turn, daemon=True)
    turn.start()
    turn.join(5)
    assert not turn.is_alive(), "the handler waited forever inside clear()"
    on_hup(signal.SIGHUP, None)  # and the flag still works after
    assert flag.is_set()


def test_a_device_re_keyed_while_its_round_is_open_is_refused_in_it_but_not_sidelined(model, tmp_path):  # noqa: F811
    """The operator re-keys dev1 (new identity on the device, its new key in the file) and reloads
    while a round that selected it is open: that round checks with the map it was selected with,
    so dev1's advertisement under the new key is refused there, but it is no offence (it sat out
    600 s, doubling, after the pardon had already run), and the next round draws it."""
    from fedge.coordinator.secagg.reload import reload_directory
    from fedge.edge_runtime.kernel.secagg import identity

    privates, path = provision(IDS, tmp_path)
    checked = dataclasses.replace(SECURE, directory_file=str(path))
    fleet = make_fleet(model, tmp_path, sizes=SIX, min_reports=3, **{**SETTINGS, "secure_aggregation": checked})
    hand_out(fleet, privates, load_directory(path))
    c = fleet.coordinator
    assert c.begin_round()
    private, public = identity.generate_identity()
    next(a for a in fleet.agents if a.device_id == "dev1").secagg.identity_private = private
    path.write_text(json.dumps({**json.loads(path.read_text()), "dev1": public.hex()}))
    assert reload_directory(c.shell, c.metrics) == {"dev1"}
    record = _finish_round(fleet)
    assert record.committed and record.reports == 5, record.why
    assert c.rejections["secagg_bad_signature"] == 1
    assert "dev1" not in c.sidelined.active(fleet.clock.now()) and "dev1" in c.eligible_devices()


def test_a_reload_returns_the_devices_added_and_re_keyed(tmp_path):
    """What the loop pardons (a device listed anew may hold the key it is listed with now); a
    removed one and an unchanged one are not in it."""
    from types import SimpleNamespace

    from fedge.coordinator.metrics import CoordinatorMetrics
    from fedge.coordinator.secagg.reload import reload_directory

    path = tmp_path / "identities.json"
    path.write_text(json.dumps({"same": "11" * 32, "rekeyed": "33" * 32, "added": "44" * 32}))
    shell = SimpleNamespace(sa=SimpleNamespace(directory_file=str(path)),
                            identities={"same": bytes.fromhex("11" * 32), "rekeyed": bytes.fromhex("22" * 32),
                                        "removed": bytes.fromhex("55" * 32)})
    assert reload_directory(shell, CoordinatorMetrics()) == {"rekeyed", "added"}
