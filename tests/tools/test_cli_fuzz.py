"""Values the CLI probe (benchmarks/results/2026-12-06-cli-fuzz/) found ending in a traceback, in
exit 0 with the value ignored, or in an error only after the run: each is now refused before any
work, exit 2, one line that names the option (the pattern of test_cli_errors.py)."""

from __future__ import annotations

import errno

import pytest

from fedge.tools.cli import main

HUGE = "1" + "0" * 30
LONG = "x" * 300  # one name past Linux's NAME_MAX (255 bytes)


def _refused(argv: list[str], capsys) -> str:
    """The one error line of `fedge argv`, which must exit 2 (argparse's SystemExit or main's return)."""
    try:
        code = main(argv)
    except SystemExit as done:
        code = done.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and ": error:" in err[-1], err
    assert all(line.startswith("usage:") or line.startswith(" ") or line is err[-1] for line in err), err
    return err[-1]


@pytest.mark.parametrize("argv, words", [
    # integers past what the command can use: a traceback, or a run that wrote an error row with exit 0
    (["provision", "broker", "--out", "{tmp}/o", "--shards", HUGE], ("argument --shards", "at most 1,024")),
    (["provision", "broker", "--out", "{tmp}/o", "--shards", "1025"], ("argument --shards", "at most 1,024")),
    (["bench", "train-step", "--json", "{tmp}/b.json", "--batch-size", HUGE], ("argument --batch-size", "at most")),
    (["bench", "train-step", "--json", "{tmp}/b.json", "--threads", HUGE], ("argument --threads", "at most")),
    (["bench", "robustness", "--json", "{tmp}/b.json", "--quick", "--workers", HUGE], ("argument --workers",)),
    (["bench", "robustness", "--json", "{tmp}/b.json", "--quick", "--workers", "0"], ("argument --workers",
                                                                                       "at least 1")),
    (["bench", "heterogeneity", "--json", "{tmp}/b.json", "--quick", "--workers", HUGE], ("argument --workers",)),
    (["bench", "brokers", "--kb", "-1"], ("argument --kb", "at least 0")),  # ValueError: negative count
    (["bench", "brokers", "--kb", HUGE], ("argument --kb", "at most 65,536")),  # OverflowError
    (["bench", "mqtt", "--update-kb", "0"], ("argument --update-kb", "at least 1")),  # _queue.Empty after the wait
    (["bench", "ingest", "--update-kb", HUGE], ("argument --update-kb", "at most 65,536")),
    (["bench", "privacy", "--quick", "--devices", "0"], ("argument --devices", "at least 1")),
    (["bench", "privacy", "--quick", "--rounds", "0"], ("argument --rounds", "at least 1")),
    (["bench", "privacy", "--quick", "--seed", "-1"], ("argument --seed", "at least 0")),
    (["bench", "async", "--quick", "--seed", "-1"], ("argument --seed", "at least 0")),
    (["bench", "scale", "--seed", HUGE], ("argument --seed", "at most 4,294,967,295")),
    (["bench", "robustness", "--quick", "--seed", HUGE], ("argument --seed", "at most 4,294,967,295")),
    (["bench", "heterogeneity", "--quick", "--seed", HUGE], ("argument --seed", "at most 4,294,967,295")),
    (["bench", "scale", "--rounds", HUGE], ("argument --rounds", "at most 1,000,000")),
    (["bench", "async", "--quick", "--rounds", HUGE], ("--rounds must be >= 1 and at most 1,000,000",)),  # ran on
    (["bench", "async", "--quick", "--devices", HUGE], ("--devices must be >= 1 and at most 1,000,000",)),
    (["bench", "scale", "--clients-per-round", HUGE], ("argument --clients-per-round", "at most 1,000,000")),
    (["bench", "screening", "--inputs", ","], ("argument --inputs", "invalid int value: ''")),
    (["bench", "screening", "--inputs", "10,abc"], ("argument --inputs", "invalid int value: 'abc'")),
    # a time limit of 0, -1, nan: "only 0 of 20 messages arrived in nan s", a RuntimeError traceback
    (["bench", "brokers", "--timeout", "nan"], ("argument --timeout", "> 0 and finite")),
    (["bench", "brokers", "--timeout", "0"], ("argument --timeout", "> 0 and finite")),
    (["bench", "mqtt", "--timeout", "-1"], ("argument --timeout", "> 0 and finite")),
    (["bench", "ingest", "--timeout", "inf"], ("argument --timeout", "> 0 and finite")),
    (["bench", "ingest", "--timeout", "1e30"], ("argument --timeout", "at most 1,000,000")),  # OverflowError
    # what a run of the privacy grid refused only inside its first run (ValueError tracebacks)
    (["bench", "privacy", "--quick", "--clients-per-round", "101"], ("--clients-per-round 101", "--devices (100)")),
    (["bench", "privacy", "--quick", "--alpha", "-1"], ("--alpha -1.0", ">= 0 and finite")),
    (["bench", "privacy", "--quick", "--data", "label-skew", "--alpha", "0"], ("--alpha 0.0", "label-skew")),
    (["bench", "ingest", "--dsn", "postgresql://db/x"], ("--dsn applies to --workers",)),  # ran, --dsn unread
    # a list that names nothing: taken as "none", the command ran without it and exited 0
    (["bench", "train-step", "--json", "{tmp}/b.json", "--models", ""], ("argument --models", "names nothing")),
    (["bench", "train-step", "--json", "{tmp}/b.json", "--backends", ","], ("argument --backends", "names nothing")),
    (["simulate", "--rounds", "1", "--profiles", ""], ("argument --profiles", "names nothing")),
    (["simulate", "--rounds", "1", "--baselines", ","], ("argument --baselines", "names nothing")),
    (["simulate", "--rounds", "1", "--transport", "mqtt", "--broker", ""], ("argument --broker", "names nothing")),
    # a name no file system takes: an OSError (File name too long) traceback
    (["simulate", "--rounds", "1", "--config", LONG], ("argument --config", "too long for a path")),
    (["build-artifacts", LONG, "{tmp}/a"], ("OSError", "File name too long")),
    (["bench", "train-step", "--json", "{tmp}/b.json", "--models", LONG], ("OSError", "File name too long")),
    # an output file that cannot be written: found by the write after the whole grid or run
    (["bench", "heterogeneity", "--json", "{tmp}", "--quick"], ("argument --json", "is a folder")),
    (["bench", "heterogeneity", "--json", "/proc/fedge-none/h.json", "--quick"],
     ("argument --json", "nothing can be written under /proc")),
    (["audit", "leakage", "--json", "{tmp}/a.json", "--png", "{tmp}"], ("argument --png", "is a folder")),
    (["simulate", "--rounds", "1", "--json", "{tmp}"], ("ConfigError", "is a folder")),
    # a --data folder no job can read: each job failed on it, after the grid's pretraining (minutes)
    (["bench", "heterogeneity", "--quick", "--json", "{tmp}/h.json", "--data", "{tmp}/none"],
     ("DatasetError", "no such directory")),
    (["simulate", "--rounds", "1", "--out", "/proc/fedge-none"], ("ConfigError", "nothing can be written under")),
])
def test_a_hostile_value_is_one_line_before_any_work(argv, words, tmp_path, capsys):
    if argv[0] == "bench" and "--json" not in argv:
        argv = [*argv, "--json", "{tmp}/b.json"]
    err = _refused([a.format(tmp=tmp_path) for a in argv], capsys)
    for word in words:
        assert word in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing left by the write check


def test_a_negative_zero_alpha_is_zero():
    """synthetic(α = -0.0) drew with numpy's normal(0, sqrt(-0.0)): "scale < 0", a traceback from
    `bench privacy --alpha -0.0` and `bench scale --alpha -0.0`; -0.0 == 0, so the data are α = 0's."""
    import numpy as np

    from fedge.tools.synthetic import synthetic

    zero, negative_zero = synthetic(3, 0.0, 0.0, seed=1), synthetic(3, -0.0, -0.0, seed=1)
    for a, b in zip(zero.clients, negative_zero.clients):
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_train, b.y_train)


def test_shard_acl_checks_its_range_before_any_topic():
    """provision broker's ACL asked for shard 1024's topic before shard_users' range check: a ValueError."""
    from fedge.edge_runtime.kernel.errors import ConfigError
    from fedge.edge_runtime.kernel.protocol import MAX_SHARDS
    from fedge.tools.broker.shard_users import shard_acl

    assert shard_acl(MAX_SHARDS).count("pattern write") == MAX_SHARDS  # the cap itself is a fleet
    with pytest.raises(ConfigError, match="--shards"):
        shard_acl(MAX_SHARDS + 1)


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    """EROFS (an output under a read-only mount) is a plain OSError, not one of the named
    subclasses main() said in one line: it was a traceback."""
    import fedge.tools.provision as provision

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ca"))
    monkeypatch.setattr(provision, "create_ca", read_only)
    assert main(["provision", "ca", "--out", str(tmp_path / "ca")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedge: error: OSError: [Errno {errno.EROFS}] Read-only file system: '{tmp_path / 'ca'}'"], err


def test_a_refused_connection_stays_a_crash(tmp_path, monkeypatch):
    """Only path errors are the user's input: any other OSError still propagates."""
    import fedge.tools.provision as provision

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    monkeypatch.setattr(provision, "create_ca", refused)
    with pytest.raises(ConnectionRefusedError):
        main(["provision", "ca", "--out", str(tmp_path / "ca")])
