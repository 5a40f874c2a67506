"""What a new user types wrong, or lacks, is one line that names the fix: no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedge.tools.cli import main
from tests.tools.install_sets import modules_missing_from

# A device-only install, reproduced by refusing the imports its extras would bring.
BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from fedge.tools.cli import main
from tests.tools.install_sets import modules_missing_from
sys.exit(main(sys.argv[2:]))
"""
# Everything beyond the device install (numpy, msgpack, paho-mqtt, psutil, onnxruntime).
DEVICE_ONLY = "onnx,mlxtend,sklearn,matplotlib,tqdm,prometheus_client,cryptography,scipy,torch"


def _run_without(blocked: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER, blocked, *argv], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("blocked, argv, extra", [
    (DEVICE_ONLY, ["simulate", "--dataset", "digits", "--rounds", "1", "--quiet"], "[sim]"),
    (DEVICE_ONLY, ["build-artifacts", "mnist-mlp-lora", "{tmp}/art"], "[models]"),
    (DEVICE_ONLY, ["provision", "ca", "--out", "{tmp}/ca"], "[coordinator]"),
    ("cryptography", ["provision", "ca", "--out", "{tmp}/ca"], "[coordinator]"),
])
def test_missing_extra_is_one_line_naming_it(blocked, argv, extra, tmp_path):
    done = _run_without(blocked, *[a.format(tmp=tmp_path) for a in argv])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert extra in lines[0] and "pip install" in lines[0], lines[0]


@pytest.mark.parametrize("argv, words", [
    (["simulate", "--alpha", "-1", "--rounds", "1"], ("--alpha -1", "> 0")),
    (["simulate", "--partition", "shards", "--classes-per-client", "0", "--rounds", "1"],
     ("--classes-per-client 0", "at least 1")),
    (["data", "split", "--devices", "0", "--out", "{tmp}"], ("--devices 0", "at least 1")),
    (["data", "split", "--devices", "10000", "--out", "{tmp}"], ("--devices 10000", "at most 2500")),
    (["simulate", "--devices", "10000", "--rounds", "1"], ("--devices 10000", "at most 2500")),
    # A split that cannot exist is one named line too, before any device is built.
    (["simulate", "--partition", "shards", "--classes-per-client", "3", "--devices", "2000", "--rounds", "1"],
     ("DatasetError", "6000 shards but only 5000 examples")),
    (["simulate", "--beta", "0.5", "--rounds", "1"], ("ConfigError", "--beta applies only to --dataset synthetic")),
    (["simulate", "--dataset", "synthetic", "--partition", "iid", "--rounds", "1"],
     ("ConfigError", "do not apply to --dataset synthetic")),
    (["simulate", "--dataset", "synthetic", "--alpha", "-1", "--rounds", "1"], ("--alpha -1.0", "both >= 0")),
    # Options that would change nothing in the run they are given to (each once ran silently)
    (["simulate", "--prox-mu", "5", "--rounds", "1"], ("--prox-mu applies to --strategy fedprox", "not fedavg")),
    (["simulate", "--strategy", "fedadam", "--server-momentum", "0.5", "--rounds", "1"],
     ("--server-momentum applies to --strategy fedavgm",)),
    (["simulate", "--attackers", "0.5", "--rounds", "1"], ("need --attack",)),
    (["simulate", "--omniscient", "--rounds", "1"], ("need --attack",)),
    (["simulate", "--alpha", "5", "--partition", "iid", "--rounds", "1"],
     ("--alpha applies to", "not --partition iid")),
    (["simulate", "--classes-per-client", "3", "--rounds", "1"],
     ("--classes-per-client applies to --partition shards",)),
    (["simulate", "--partition", "shards", "--classes-per-client", "11", "--dataset", "digits", "--rounds", "1"],
     ("--classes-per-client 11", "digits has 10 labels")),
    # 6 shards over 10 labels: the devices held 4 to 6 labels each, the run said 2.
    (["simulate", "--partition", "shards", "--devices", "3", "--dataset", "digits", "--rounds", "1"],
     ("DatasetError", "3 devices x --classes-per-client 2", "--devices 5")),
    (["simulate", "--finetune-steps", "50", "--rounds", "1"],
     ("--finetune-steps applies to --personalization finetune",)),
    (["simulate", "--personalization", "none", "--personal-head-from-global", "--rounds", "1"],
     ("--personal-head-from-global",)),
    (["simulate", "--new-device-steps", "5", "--rounds", "1"], ("--new-device-steps needs --new-devices",)),
    # ... and each typed at its default value, which passed silently when the check compared values
    (["simulate", "--attackers", "0.2", "--rounds", "1"], ("need --attack",)),
    (["simulate", "--classes-per-client", "2", "--rounds", "1"],
     ("--classes-per-client applies to --partition shards",)),
    (["simulate", "--finetune-steps", "20", "--rounds", "1"],
     ("--finetune-steps applies to --personalization finetune",)),
    (["simulate", "--new-device-steps", "20", "--rounds", "1"], ("--new-device-steps needs --new-devices",)),
    (["simulate", "--dataset", "synthetic", "--partition", "dirichlet", "--rounds", "1"],
     ("ConfigError", "do not apply to --dataset synthetic")),
    (["simulate", "--dataset", "synthetic", "--classes-per-client", "2", "--rounds", "1"],
     ("ConfigError", "do not apply to --dataset synthetic")),
    (["simulate", "--broker", "mqtt://localhost:1", "--rounds", "1"], ("--broker needs --transport mqtt",)),
    (["simulate", "--aggregator", "krum", "--bucket-size", "100", "--rounds", "1"],
     ("bucket_size 100 makes fewer than 2 buckets", "at most 5")),
    # Found by the CLI fuzzing helper: each once a traceback, a run that failed late, or a silent no-op
    (["simulate", "--strategy", "fedadam", "--server-tau", "1e155", "--rounds", "1"], ("server_tau", "at most")),
    (["simulate", "--strategy", "fedprox", "--prox-mu", "1e300", "--rounds", "1"], ("ConfigError", "hyper.mu")),
    (["simulate", "--plot", "{tmp}/p.svg", "--rounds", "1"], ("--plot", "a PNG")),
    (["simulate", "--plot", "{tmp}/p", "--rounds", "1"], ("--plot", "a PNG")),
    (["simulate", "--alpha", "inf", "--rounds", "1"], ("--alpha inf", "finite")),
    (["data", "split", "--alpha", "inf", "--out", "{tmp}/d"], ("--alpha inf", "finite")),
    (["build-artifacts", "mnist-mlp-lora", "{tmp}/a", "--classes", "3"], ("--classes", "only for --from-onnx")),
    (["device", "init", "--out", "{tmp}/d.toml", "--id", "a/b"], ("ConfigError", "device_id 'a/b'")),
    (["device", "init", "--out", "{tmp}/d.toml", "--id", "a\nb"], ("ConfigError", "no valid TOML")),
    (["device", "init", "--out", "{tmp}/d.toml", "--broker", "ftp://h"], ("ConfigError", "broker.url")),
    # A folder: "exists; pass --force to replace it", and --force then an IsADirectoryError
    (["device", "init", "--out", "{tmp}"], ("ConfigError", "is a folder")),
    (["device", "init", "--out", "{tmp}", "--force"], ("ConfigError", "is a folder")),
])
def test_bad_argument_is_one_line(argv, words, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:"), err
    for word in words:
        assert word in err[0], err[0]
    assert list(tmp_path.iterdir()) == []  # nothing written on the way to the error


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    from importlib.metadata import version

    assert capsys.readouterr().out.strip() == f"fedge {version('fedge')}"


@pytest.mark.parametrize("bench", ["train-step", "heterogeneity", "mqtt", "scale"])
@pytest.mark.parametrize("flags", [["-v"], ["-vv", "--log-format", "json"], ["--log-format", "journald"]])
def test_global_flags_before_every_bench(flags, bench, capsys):
    with pytest.raises(SystemExit) as done:  # the benchmark's own --help: parsed, nothing run
        main([*flags, "bench", bench, "--help"])
    assert done.value.code == 0
    assert f"fedge bench {bench}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["simulate", "build-artifacts", "data split", "device run", "device probe",
                                     "coordinator serve", "provision ca"])
def test_global_flags_before_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        main(["-v", "--log-format", "json", *command.split(), "--help"])
    assert done.value.code == 0
    assert "usage: fedge" in capsys.readouterr().out


def test_verbose_bench_train_step_runs(tmp_path):
    """`fedge -v bench train-step` ran the parser's bench branch and hit an AssertionError."""
    out = tmp_path / "ts.json"
    assert main(["-v", "bench", "train-step", "--json", str(out), "--models", "mnist-mlp-lora",
                 "--backends", "numpy", "--steps", "2", "--warmup", "0"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("argv", [["device", "probe", "--json"], ["device", "init", "--out", "{tmp}/device.toml"],
                                  ["--version"]])
def test_device_commands_need_only_the_device_install(argv, tmp_path):
    done = _run_without(DEVICE_ONLY, *[a.format(tmp=tmp_path) for a in argv])
    assert done.returncode == 0, done.stderr


def test_the_demo_install_runs_the_simulator(tmp_path):
    """`make demo` installs only [device,sim]: `fedge simulate` must run with nothing else (a
    coordinator import of dp-accounting, then only in [coordinator], once broke the demo)."""
    blocked = modules_missing_from("device", "sim")
    assert "pytest" in blocked and "dp_accounting" not in blocked
    done = _run_without(",".join(sorted(blocked)), "simulate", "--dataset", "digits", "--devices", "4", "--rounds",
                        "1", "--quiet", "--json", str(tmp_path / "run.json"))
    assert done.returncode == 0, done.stderr[-3000:]


def _npz_folder(tmp, label):
    import numpy as np

    folder = tmp / "clients"
    folder.mkdir()
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)  # unit-scale: no load-time finding beside the error
    np.savez(folder / "c0.npz", x_train=x, y_train=np.array([0, 1, 0, label], np.uint64), x_test=x[:0],
             y_test=np.zeros(0, np.int64))
    return folder


# Inputs a reviewing helper found ending in a traceback (or the kernel's OOM killer): each is
# now one named line, exit 2. setup(tmp) makes the input and returns the argv.
UNUSABLE = {
    "config is a folder": (lambda t: (t / "c.toml").mkdir() or ["simulate", "--config", str(t / "c.toml")],
                           ("ConfigError", "cannot be read")),
    "config not UTF-8": (lambda t: (t / "c.toml").write_bytes(b"\xff\xfe\x00bad") and
                         ["simulate", "--config", str(t / "c.toml")], ("ConfigError", "not UTF-8")),
    "integer past float": (lambda t: (t / "c.toml").write_text("[coordinator]\nround_deadline_s = 1" + "0" * 400)
                           and ["simulate", "--config", str(t / "c.toml")], ("ConfigError", "too large")),
    "over-selection nan": (lambda t: ["simulate", "--over-selection", "nan"], ("ConfigError", "over_selection")),
    "simulate seed -1": (lambda t: ["simulate", "--seed", "-1"], ("ConfigError", "--seed -1")),
    "pretrain seed -1": (lambda t: ["pretrain", "--out", str(t / "p"), "--seed", "-1"], ("ConfigError", "-1")),
    "pretrain lr nan": (lambda t: ["pretrain", "--out", str(t / "p"), "--lr", "nan"], ("ConfigError", "lr")),
    "pretrain lr past a task's": (lambda t: ["pretrain", "--out", str(t / "p"), "--lr", "1e300"],
                                  ("ConfigError", "at most 1e+06")),
    "data split seed -1": (lambda t: ["data", "split", "--out", str(t / "d"), "--seed", "-1"], ("ConfigError",)),
    "guard set missing": (lambda t: (t / "c.toml").write_text(f'[coordinator]\nguard_set = "{t}/none.npz"\n')
                          and ["simulate", "--config", str(t / "c.toml")], ("FileNotFoundError", "none.npz")),
    "a label of 1e9": (lambda t: ["simulate", "--data", str(_npz_folder(t, 10**9))],
                       ("DatasetError", "label 1000000000")),
    "a uint64 label of 2**63": (lambda t: ["simulate", "--data", str(_npz_folder(t, 2**63))],
                                ("DatasetError", "9223372036854775808")),
    "output folder is a file": (lambda t: (t / "f").write_text("x") and ["build-artifacts", "mnist-mlp-lora",
                                                                         str(t / "f")],
                                ("ForeignOutput", "is a file, not a folder")),
    "a layer of 1e8 units": (lambda t: (t / "s.toml").write_text(
        '[model]\nname = "x"\ninput_shape = [4]\nnum_classes = 2\n[[model.layers]]\nname = "fc1"\n'
        'units = 100000000\n') and ["build-artifacts", str(t / "s.toml"), str(t / "a")], ("ConfigError", "units")),
    "lora_alpha nan": (lambda t: (t / "s.toml").write_text(
        '[model]\nname = "x"\ninput_shape = [4]\nnum_classes = 2\nlora_alpha = nan\n[[model.layers]]\n'
        'name = "fc1"\nunits = 4\nmode = "lora"\n') and ["build-artifacts", str(t / "s.toml"), str(t / "a")],
                       ("ConfigError", "lora_alpha")),
    "privacy report of a text file": (lambda t: (t / "s.db").write_text("garbage") and
                                      ["coordinator", "privacy", "--state", str(t / "s.db")],
                                      ("ConfigError", "not a fedge state database")),
    "privacy report of a folder": (lambda t: (t / "s.db").mkdir() or
                                   ["coordinator", "privacy", "--state", str(t / "s.db")], ("no such state file",)),
    "CA with an empty name": (lambda t: ["provision", "ca", "--out", str(t / "ca"), "--name", ""],
                              ("ConfigError", "1 to 64")),
    "identities directory is a folder": (lambda t: (t / "ids").mkdir() or [
        "provision", "identity", "--id", "d1", "--out", str(t / "keys"), "--directory", str(t / "ids")],
                                         ("ConfigError", "--directory")),
    "broker port 0": (lambda t: (t / "d.toml").write_text('device_id = "d1"\n[broker]\nurl = "mqtt://h:0"\n'
                                                          '[data]\nnpz = "x.npz"\n')
                      and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "mqtt://h:0")),
    "probe root missing": (lambda t: ["device", "probe", "--root", str(t / "none")], ("ConfigError", "probe root")),
    "keepalive -1": (lambda t: (t / "d.toml").write_text('device_id = "d1"\n[broker]\nkeepalive_s = -1\n'
                                                         '[data]\nnpz = "x.npz"\n')
                     and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "keepalive_s")),
}


def _untested_last_device(tmp):
    """Two devices; the last one (held out by --new-devices 1) has no test examples."""
    import numpy as np

    folder = _npz_folder(tmp, 1)  # c0: four training examples, no test
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.savez(folder / "b0.npz", x_train=x, y_train=np.array([0, 1]), x_test=x, y_test=np.array([0, 1]))
    return folder


# Test splits may be empty per file, but a run needs some to score on: each ended in numpy's
# "zero-size array to reduction operation minimum" (after round 1; after the last round).
UNUSABLE["no device holds test examples"] = (
    lambda t: ["simulate", "--data", str(_npz_folder(t, 1))], ("DatasetError", "no training device holds test"))
UNUSABLE["no new device holds test examples"] = (
    lambda t: ["simulate", "--data", str(_untested_last_device(t)), "--new-devices", "1"],
    ("DatasetError", "no --new-devices device holds test examples (c0)"))
# A file's name is its device's id: "site+1.npz" ended in protocol.device_topic's ValueError in
# memory, and over MQTT in "FleetNotReady: ... the broker or this machine may be overloaded".
UNUSABLE["a file named like an MQTT wildcard"] = (
    lambda t: (_untested_last_device(t) / "c0.npz").rename(t / "clients" / "site+1.npz") and
    ["simulate", "--data", str(t / "clients")], ("DatasetError", "site+1.npz", "rename the file"))
UNUSABLE["a device backend that does not exist"] = (
    lambda t: (t / "d.toml").write_text('device_id = "d1"\nbackend = "gpu"\n[data]\nnpz = "x.npz"\n')
    and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "backend 'gpu'"))  # once: at a task
UNUSABLE["a device config without its id"] = (
    lambda t: (t / "d.toml").write_text('[data]\nnpz = "x.npz"\n')
    and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "missing required key(s) 'device_id'"))
# A file where the device's state folder goes: the mkdir's NotADirectoryError was a traceback, exit 1,
# which systemd restarts forever (a disk mounted late is a folder, never a file).
UNUSABLE["a state_dir that is a file"] = (
    lambda t: (t / "s").write_text("x") and (t / "d.toml").write_text(
        f'device_id = "d1"\nstate_dir = "{t}/s"\n[data]\nnpz = "x.npz"\n')
    and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "/s is a file, not a folder"))
UNUSABLE["a file where the device's state folder goes"] = (
    lambda t: (t / "d1").write_text("x") and (t / "d.toml").write_text(
        f'device_id = "d1"\nstate_dir = "{t}"\n[data]\nnpz = "x.npz"\n')
    and ["device", "run", "--config", str(t / "d.toml")], ("ConfigError", "/d1 is a file, not a folder"))
UNUSABLE["an update cap below the model's update"] = (
    lambda t: (t / "c.toml").write_text('[coordinator]\nmax_update_bytes = 1000\n')
    and ["simulate", "--config", str(t / "c.toml")], ("ConfigError", "max_update_bytes 1000 is below", "at least"))
UNUSABLE["a table beside [coordinator]"] = (
    lambda t: (t / "c.toml").write_text('[coordinator]\nclients_per_round = 5\n[secure_aggregation]\nenabled = true\n')
    and ["simulate", "--config", str(t / "c.toml")], ("ConfigError", "secure_aggregation beside [coordinator]"))


@pytest.mark.parametrize("argv, words", [
    (["secagg", "--devices", "1", "--dimension", "10"], ("--devices >= 2",)),
    (["secagg", "--devices", "5", "--dropouts", "0.8", "--bits", "8", "--dimension", "10", "--repeats", "1"],
     ("--dropouts 0.8", "threshold")),
    (["secagg", "--devices", "5", "--dropouts", "0", "--bits", "64", "--dimension", "10", "--repeats", "1"],
     ("bits must be in [2, 24]",)),
    (["secagg", "--devices", "5", "--repeats", "0"], ("--repeats >= 1",)),
    (["scale", "--sizes", "0"], ("sizes >= 1",)),
    (["privacy", "--quick", "--epsilons", "-1"], ("--epsilons", "> 0")),
    (["privacy", "--quick", "--mechanisms", "bogus"], ("--mechanisms bogus",)),
    (["heterogeneity", "--quick", "--rounds", "0"], ("rounds >= 1",)),
    (["robustness", "--quick", "--attacks", "bogus"], ("unknown 'bogus'",)),
    (["robustness", "--quick", "--defenses", "mean+foo"], ("unknown 'mean+foo'",)),
    (["async", "--quick", "--devices", "0"], ("--devices must be >= 1",)),
    # each grid value below once reached a child process's traceback or a misleading late error
    (["scale", "--sizes", "10", "--alpha", "nan"], ("--alpha nan", "finite")),
    (["scale", "--sizes", "10", "--beta", "inf"], ("--beta inf", "finite")),
    (["scale", "--sizes", "10", "--seed", "-1"], ("argument --seed: -1", "at least 0")),
    (["privacy", "--quick", "--delta", "2"], ("--delta 2.0", "(0, 1)")),
    (["privacy", "--quick", "--delta", "nan"], ("--delta nan", "(0, 1)")),
])
def test_a_bad_bench_option_is_a_usage_error(argv, words, tmp_path, capsys):
    """Each once gave a traceback from deep inside the run, or (robustness) ran every cell into
    an error and exited 0."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv, "--json", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"fedge bench {argv[0]}: error:") and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_unusable_input_is_one_line(case, tmp_path, capsys):
    setup, words = UNUSABLE[case]
    argv = setup(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main([*argv, *(["--rounds", "1", "--quiet"] if argv[0] == "simulate" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:"), err
    for word in words:
        assert word in err[0], err[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("argv, words", [
    (["--devices", "abc"], ("--devices 'abc'",)), (["--steps", "-1"], ("--steps -1", ">= 1")),
    (["--batches", "0"], ("--batches 0",)), (["--seed", "-1"], ("--seed -1",)), (["--png", "{tmp}/x.txt"], (".png",)),
])
def test_a_bad_audit_option_is_a_usage_error(argv, words, tmp_path, capsys):
    """Each once ended in a traceback (int('abc'), numpy's seed, matplotlib's format) or, for
    --steps -1, ran and wrote a meaningless audit."""
    with pytest.raises(SystemExit) as exc:
        main(["audit", "leakage", "--json", str(tmp_path / "x.json"), *[a.format(tmp=tmp_path) for a in argv]])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fedge audit leakage: error:") and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


def test_an_attack_past_float32_is_sent_as_its_largest(tmp_path):
    """--attack-scale 1e39 overflowed the attacker's float32 update to Inf: the encoder's bare
    ValueError ended the run in a traceback. The attacker now sends the largest finite values."""
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "1", "--quiet", "--attack", "scale",
                 "--attack-scale", "1e39", "--json", str(tmp_path / "run.json")]) == 0


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow warning on the way to Diverged
def test_pretrain_that_diverges_writes_no_model(tmp_path, capsys):
    """--lr 1e300 once wrote a pretrained.onnx of NaN weights and exited 0 (it is now refused before
    training: at most a task's 1e6); 1e5 is in range and diverges."""
    assert main(["pretrain", "--dataset", "digits", "--out", str(tmp_path / "p"), "--lr", "1e5"]) == 2
    assert "Diverged" in capsys.readouterr().err
    assert not (tmp_path / "p" / "pretrained.onnx").exists()


def test_device_init_quotes_what_it_writes(tmp_path):
    """A quote in --id or a backslash in --data once wrote a device.toml that was not TOML."""
    from fedge.edge_runtime.device_config import load_device_config

    out = tmp_path / "d.toml"
    assert main(["device", "init", "--out", str(out), "--id", 'site"1', "--data", "C:\\data\\x.npz"]) == 0
    cfg = load_device_config(out)
    assert (cfg.device_id, cfg.data.npz) == ('site"1', "C:\\data\\x.npz")


def test_a_failed_write_leaves_no_temp_file(tmp_path):
    """`device init --out FOLDER --force`: the rename failed and left .FOLDER.tmp-PID beside it."""
    (tmp_path / "folder").mkdir()
    assert main(["device", "init", "--out", str(tmp_path / "folder"), "--force"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_the_round_table_header_comes_with_the_first_row(tmp_path, capsys):
    """`fedge simulate --data missing/` printed the table's header, then the error: a table for
    a run that never began. The header now comes with the first row, once."""
    from fedge.tools.simulate.report import HEADER

    assert main(["simulate", "--data", str(tmp_path / "missing"), "--rounds", "1"]) == 2
    assert HEADER not in capsys.readouterr().out
    assert main(["simulate", "--dataset", "digits", "--devices", "3", "--clients-per-round", "3", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines.count(HEADER) == 1 and lines[1] == HEADER and lines[2].split()[0] == "1", lines[:3]


def test_a_named_refusal_says_its_reason_once(capsys):
    """Once: "AsyncConflict (async_scaffold): mode = 'async' (async_scaffold): ..." (the message has it)."""
    import argparse
    from types import SimpleNamespace

    from fedge.coordinator.async_mode.config import check_mode
    from fedge.tools.cli import _guarded

    cfg = SimpleNamespace(mode="async", secure_aggregation=SimpleNamespace(enabled=False), strategy="scaffold",
                          state_dsn="", model_part_bytes=0)
    assert _guarded(argparse.Namespace(verbose=0, log_format="text"), lambda: check_mode(cfg)) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("fedge: error: AsyncConflict: mode = 'async' (async_scaffold): ")
    assert line.count("(async_scaffold)") == 1
