"""The privacy ledger is read back from a state file, which fedge treats as hostile: a row that
is no charge fedge wrote stops `fedge coordinator privacy` and the coordinator's start with a
named ConfigError (which file, which row, what is wrong), not a traceback from json, RoundPlan
or the accountant (coordinator/dp/round.py RoundPlan.from_json, report.py, budget.py)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.round import RoundPlan
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.cli import main
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp import _direct
from tests.coordinator.test_dp_rounds import DP
from tests.tiny_model import build_tiny_model

GOOD = RoundPlan(4, 4, 3.0, 0.05, 4, 1e-3, 1000.0, 2.17, "fixed", "rdp").to_json()
BAD = {  # what the row's charge column holds -> what the error names
    "not json": ("{not json", "Expecting property name"),
    "a list": ("[1, 2]", "must be a JSON object, not list"),
    "a number": (7, "no charge"),
    "an unknown field": (json.dumps({**GOOD, "extra": 1}), "unknown field(s) extra"),
    "a text z": (json.dumps({**GOOD, "noise_multiplier": "abc"}), "noise_multiplier = 'abc' is not a finite float"),
    "z = 0": (json.dumps({**GOOD, "noise_multiplier": 0.0}), "noise_multiplier > 0"),
    "cohort > population": (json.dumps({**GOOD, "cohort": 99}), "cohort (99) <= population (4)"),
    "a fractional population": (json.dumps({**GOOD, "population": 4.5}), "population = 4.5 is not a finite int"),
    "delta 5": (json.dumps({**GOOD, "delta": 5}), "0 < delta < 1"),
    "no delta": (json.dumps({k: v for k, v in GOOD.items() if k != "delta"}), "delta"),
    "an unknown accountant": (json.dumps({**GOOD, "accountant": "moments"}), "accountant 'moments'"),
    # below: taken as a charge before (an unknown mechanism is charged as none: records.py)
    "a negative epsilon": (json.dumps({**GOOD, "epsilon_after": -2.0}), "epsilon_after"),
    "an unknown mechanism": (json.dumps({**GOOD, "mechanism": "magic"}), "mechanism 'magic'"),
    "a negative count noise": (json.dumps({**GOOD, "count_stddev": -1.0}), "count_stddev"),
    "a group without noise": (json.dumps({**GOOD, "groups": [{"noise_std": "x"}]}), "groups = "),
    "a short noise key": (json.dumps({**GOOD, "noise_key": "abc"}), "noise_key = 'abc' is not 32 hex digits"),
    "a noise key of capitals": (json.dumps({**GOOD, "noise_key": "AB" * 16}), "is not 32 hex digits"),
    "a number for a noise key": (json.dumps({**GOOD, "noise_key": 7}), "noise_key = 7 is not a finite str"),
}


def _state(tmp_path, charge) -> str:
    path = tmp_path / "state.db"
    RoundStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO privacy_ledger (round_id, charge) VALUES (1, ?)", (json.dumps(GOOD),))
        db.execute("INSERT INTO privacy_ledger (round_id, charge) VALUES (2, ?)", (charge,))
    return str(path)


def test_a_ledger_fedge_wrote_is_read_as_before(tmp_path, capsys):
    assert main(["coordinator", "privacy", "--state", _state(tmp_path, json.dumps(GOOD)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epsilon_spent"] == pytest.approx(_direct("fixed", 4, 4, 3.0, 2, 1e-3), abs=1e-9)


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_privacy_command_names_a_ledger_row_that_is_no_charge(tmp_path, capsys, case):
    charge, said = BAD[case]
    assert main(["coordinator", "privacy", "--state", _state(tmp_path, charge)]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "privacy_ledger round 2 is no charge fedge wrote" in err and said in err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("case", ["not json", "a list", "a text z", "cohort > population", "no delta",
                                  "a negative epsilon", "an unknown mechanism"])
def test_the_coordinator_does_not_start_on_a_ledger_row_that_is_no_charge(model, tmp_path, case):
    charge, said = BAD[case]
    store = RoundStore(_state(tmp_path, charge))
    privacy = PrivacyConfig(enabled=True, noise_multiplier=3.0, target_epsilon=1000.0, delta=1e-3, clip_norm=0.05)
    with pytest.raises(ConfigError, match="privacy_ledger") as caught:
        make_fleet(model, tmp_path, sizes=(10, 12), store=store, **DP, privacy=privacy)
    assert said in str(caught.value) and "state.db" in str(caught.value)


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("edit,said", [("json_set(privacy, '$.cohort', 99)", "cohort (99) <= population"),
                                       ("json_set(privacy, '$.clip_norm', 'big')", "clip_norm = 'big'"),
                                       ("'[]'", "not list"),
                                       ("json_set(privacy, '$.mechanism', 'magic')", "mechanism 'magic'")])
def test_the_coordinator_does_not_resume_an_open_round_whose_plan_is_no_plan(model, tmp_path, edit, said, enabled):
    """The open round's plan (rounds.privacy) is read back to replay it with the same noise: a
    hostile one raised RoundPlan's TypeError or RoundCharge's ValueError out of the start."""
    from dataclasses import replace

    from tests.coordinator.test_dp_restart_config import _open_round

    fleet, _, db = _open_round(model, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE rounds SET privacy = {edit} WHERE status = 'open'")
    cfg = fleet.coordinator.config
    cfg = replace(cfg, privacy=replace(cfg.privacy, enabled=enabled))
    with pytest.raises(ConfigError, match="open round 1 holds a privacy plan fedge did not write") as caught:
        fleet.restart(store=RoundStore(db), config=cfg)
    assert said in str(caught.value)


def test_someone_elses_database_is_no_ledger_of_nothing_spent(tmp_path, capsys):
    """`--state` naming another program's SQLite file (no fedge meta, no ledger) printed "no round
    charged yet (ε spent 0)", exit 0: a false privacy report. It is refused now, the file unread
    beyond its table list; a fedge state from before the ledger (schema < 3) still reads as none."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    before = other.read_bytes()
    assert main(["coordinator", "privacy", "--state", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"ConfigError: {other}: not a fedge state database" in err and "Traceback" not in err, err
    assert other.read_bytes() == before

    old = tmp_path / "old.db"
    RoundStore(old).close()
    with sqlite3.connect(old) as db:
        db.execute("DROP TABLE privacy_ledger")
    assert main(["coordinator", "privacy", "--state", str(old)]) == 0
    assert "no round charged" in capsys.readouterr().out
