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
