"""`fedge simulate --round-deadline` with the in-memory transport is refused by name
(DeadlineInMemory): it changed nothing there, since an in-memory device trains in no simulated
time and who answers late is drawn from the seed. The oracle: two in-memory runs, deadlines 1 s
and 600 s, with a straggler each round, whose every round is the same but for its wall time."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.tools.cli import main
from fedge.tools.simulate.config import SIM_COORDINATOR, SimConfig, sim_config
from fedge.tools.simulate.flag_checks import DeadlineInMemory, check_options_apply
from fedge.tools.simulate.fleet import run_simulation


def test_the_in_memory_run_is_the_same_with_any_round_deadline(tmp_path):
    runs = [run_simulation(sim_config(dataset="digits", devices=4, rounds=2, clients_per_round=3, over_selection=1.3,
                                      round_deadline_s=deadline, out_dir=str(tmp_path / str(deadline))))
            for deadline in (1.0, 600.0)]
    assert all(len(run.rounds) == 2 for run in runs)
    assert runs[0].summary["rejections"].get("stale_round", 0) == 2  # a straggler a round, answering late

    def timeless(row):
        return {key: value for key, value in row.items() if "seconds" not in key}

    assert [timeless(r) for r in runs[0].rounds] == [timeless(r) for r in runs[1].rounds]


def test_the_flag_is_refused_in_memory_by_name_and_taken_over_mqtt():
    deadline = dataclasses.replace(SIM_COORDINATOR, round_deadline_s=5.0)
    with pytest.raises(DeadlineInMemory, match="--round-deadline needs --transport mqtt: in memory a device trains "
                                               "in no simulated time") as caught:
        check_options_apply(SimConfig(coordinator=deadline), {"round_deadline_s"})
    assert caught.value.reason == "round_deadline_in_memory"
    check_options_apply(SimConfig(coordinator=deadline, transport="mqtt"), {"round_deadline_s"})
    check_options_apply(SimConfig(coordinator=deadline), set())  # a --config file's deadline loads: serve reads it


def test_the_command_line_says_so_in_one_line(tmp_path, capsys):
    assert main(["simulate", "--round-deadline", "5", "--rounds", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:") and "--round-deadline needs --transport mqtt" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything ran
