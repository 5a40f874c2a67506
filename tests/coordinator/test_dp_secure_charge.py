"""A distributed-DP secure round is charged once its unmasking began (secagg/shell.py, _release):
from the first accepted unmask answer the coordinator may compute the noised sum, so a round
abandoned after it (the model guard refuses the aggregate, or the process is killed between the
unmask and the close) is charged, exactly once, also across a restart; a round abandoned before
any unmask answer (stopped at the mask stage, or killed there) revealed nothing and stays free.
Oracle: the ledger's entries, and ε from dp-accounting called directly."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from fedge.coordinator import server as server_module
from fedge.coordinator.secagg.stages import UNMASK, UNMASK_STAGE
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.secagg.messages import UnmaskResponse
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp import _direct, _direct_unsampled
from tests.coordinator.test_dp_distributed import PRIVATE, SECURE, SETTINGS, _run_round
from tests.coordinator.test_sharding_secagg import _run_round as _silent_from
from tests.tiny_model import build_tiny_model

SIZES = (12, 20, 16, 24, 18)  # five devices, all asked: quorum 3


class Killed(BaseException):
    """Stands for a kill -9: the coordinator object is dropped where it raised."""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fleet(model, tmp_path, **secure):
    """The target fits one round, not two: a restart that counted the open round's charge on top of
    the ledger holding it already would refuse to start (dp/budget.py, check_open)."""
    private = replace(PRIVATE, target_epsilon=(_oracle(1) + _oracle(2)) / 2)
    return make_fleet(model, tmp_path, sizes=SIZES, aggregator="mean", min_reports=3,
                      store=RoundStore(tmp_path / "s.db"), **{**SETTINGS, "privacy": private,
                                                               "secure_aggregation": replace(SECURE, **secure)})


def _oracle(rounds: int) -> float:
    """ε of `rounds` charges of 5 of 5 devices at z = 2, δ = 1e-5, by dp-accounting directly (fixed-size
    rounds are charged the smaller of the sampled and the plain Gaussian bound: test_dp)."""
    return min(_direct("fixed", 5, 5, PRIVATE.noise_multiplier, rounds, 1e-5),
               _direct_unsampled(PRIVATE.noise_multiplier, rounds, 1e-5))


def _charged_once(c, path):
    ledger = c.store.privacy_ledger()
    assert [(e["mechanism"], e["population"], e["cohort"]) for e in ledger] == [("distributed", 5, 5)]
    assert c.privacy.spent() == pytest.approx(_oracle(1), rel=1e-9)
    assert len(RoundStore(path).privacy_ledger()) == 1


def test_a_secure_round_the_guard_refuses_after_unmasking_is_charged_once(model, tmp_path, monkeypatch):
    fleet = _fleet(model, tmp_path)
    monkeypatch.setattr(server_module, "commit_fault", lambda *_: "holdout_regressed: refused by the test")
    record = _run_round(fleet, SECURE.stage_deadline_s)
    assert not record.committed and record.why.startswith("holdout_regressed")
    c = fleet.coordinator
    assert c.state.version == 0
    _charged_once(c, tmp_path / "s.db")
    c = fleet.restart(store=RoundStore(tmp_path / "s.db"))
    _charged_once(c, tmp_path / "s.db")


def _kill_after(monkeypatch, obj, name, when):
    """obj.name runs, then the process is 'killed' when `when(args, result)` holds."""
    method = getattr(obj, name)

    def then_kill(*args):
        result = method(*args)
        if when(args, result):
            raise Killed
        return result
    monkeypatch.setattr(obj, name, then_kill)


@pytest.mark.parametrize("where", ["commit", "unmask_answer"])
def test_a_secure_round_killed_after_its_unmasking_began_is_charged_once_at_the_restart(model, tmp_path,
                                                                                         monkeypatch, where):
    """Killed once the noised sum is computed, before its close (at the guard's check, before the
    commit), or right after the first unmask answer is accepted: the restart abandons the round (a
    secure round cannot resume) and the ledger holds its charge once."""
    fleet = _fleet(model, tmp_path)
    if where == "commit":
        _kill_after(monkeypatch, server_module, "commit_fault", lambda args, result: True)
    else:
        _kill_after(monkeypatch, fleet.coordinator.shell, "admit",
                    lambda args, refused: isinstance(args[1], UnmaskResponse) and refused is None)
    with pytest.raises(Killed):
        _run_round(fleet, SECURE.stage_deadline_s)
    monkeypatch.undo()
    c = fleet.restart(store=RoundStore(tmp_path / "s.db"))
    assert c.round is None and c.history[-1].why == "a secure round cannot resume after a restart"
    _charged_once(c, tmp_path / "s.db")
    c = fleet.restart(store=RoundStore(tmp_path / "s.db"))  # and once more: still one charge
    _charged_once(c, tmp_path / "s.db")


@pytest.mark.parametrize("kill", [False, True])
def test_a_secure_round_abandoned_before_any_unmask_answer_is_not_charged(model, tmp_path, monkeypatch, kill):
    """Every device silent once the unmask requests are out (abandoned at the stage's deadline), or
    the process killed right after sending them: nothing of the sum was revealed."""
    fleet = _fleet(model, tmp_path)
    if kill:
        _kill_after(monkeypatch, fleet.coordinator.shell, "send", lambda args, result: args[1] == UNMASK)
        with pytest.raises(Killed):
            _run_round(fleet, SECURE.stage_deadline_s)
        c = fleet.restart(store=RoundStore(tmp_path / "s.db"))
        record = c.history[-1]
    else:
        record = _silent_from(fleet, drop=tuple(a.device_id for a in fleet.agents), drop_at_stage=UNMASK_STAGE)
        c = fleet.coordinator
    assert not record.committed and (record.why.endswith("at the unmask stage") or "cannot resume" in record.why)
    assert c.store.privacy_ledger() == [] and c.privacy.spent() == 0.0
    assert RoundStore(tmp_path / "s.db").privacy_ledger() == []


def test_a_secure_round_that_held_unmask_answers_and_missed_its_minimum_is_charged(model, tmp_path):
    """unmask_min = 5 above t: three answers (enough for the sum) and two silent devices, abandoned at
    the unmask deadline without the server computing the sum. It held what reveals it: charged."""
    fleet = _fleet(model, tmp_path, unmask_min=5)
    c = fleet.coordinator
    silent = tuple(a.device_id for a in fleet.agents[:2])
    record = _silent_from(fleet, drop=silent, drop_at_stage=UNMASK_STAGE)
    assert not record.committed and record.why.endswith("at the unmask stage") and record.why.startswith("deadline")
    assert c.shell.states[record.round_id].t <= 3  # the three answers could have unmasked it
    _charged_once(c, tmp_path / "s.db")


def test_a_secure_round_whose_early_charge_write_failed_is_charged_at_its_close(model, tmp_path, monkeypatch):
    """The store refuses every early charge (a locked database, a dropped connection): the loop drops
    each unmask answer's message as an internal error (loop._pump), but the machine holds the answers,
    three of them enough for the sum. Abandoned at the unmask deadline (unmask_min = 5), the round is
    charged at its close, once."""
    fleet = _fleet(model, tmp_path, unmask_min=5)
    c = fleet.coordinator
    failed = []

    def refuse(*_):
        failed.append(1)
        raise sqlite3.OperationalError("database is locked")

    def pump_as_the_loop_does(timeout=0.0, _pump=c.pump):
        try:
            return _pump(timeout)
        except sqlite3.OperationalError:
            return True  # loop._pump: the message is lost, the service goes on
    monkeypatch.setattr(c.store, "charge_round", refuse)
    monkeypatch.setattr(c, "pump", pump_as_the_loop_does)
    record = _silent_from(fleet, drop=tuple(a.device_id for a in fleet.agents[:2]), drop_at_stage=UNMASK_STAGE)
    assert failed and not record.committed and record.why.endswith("at the unmask stage")
    monkeypatch.undo()
    _charged_once(c, tmp_path / "s.db")
