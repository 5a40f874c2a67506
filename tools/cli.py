"""The `fedge` command. Subcommands import their modules lazily, so a device install never
loads the simulator, and `fedge --help` stays fast."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import select
import sys

from fedge.edge_runtime.kernel.errors import ConfigError, FedgeError, NamedConfigError
from fedge.tools.cli_args import path_arg

# Which extra a command needs, and which extra brings each module the commands import lazily:
# a missing module is named with its fix, not a traceback.
COMMAND_EXTRAS = {"simulate": "sim", "data": "sim", "bench": "sim", "audit": "sim", "build-artifacts": "models",
                  "provision": "coordinator", "coordinator": "coordinator", "device": "device",
                  "protocol-doc": "coordinator"}
EXTRAS = {"onnx": "sim", "mlxtend": "sim", "sklearn": "sim", "matplotlib": "sim", "tqdm": "sim",
          "prometheus_client": "coordinator", "cryptography": "coordinator", "onnxruntime": "device",
          "paho": "device", "psutil": "device", "msgpack": "device"}
BENCHES = {"train-step": "fedge.tools.bench.train_step", "heterogeneity": "fedge.tools.bench.heterogeneity",
           "robustness": "fedge.tools.bench.robustness", "mqtt": "fedge.tools.bench.mqtt",
           "privacy": "fedge.tools.bench.privacy",
           "secagg": "fedge.tools.bench.secagg", "async": "fedge.tools.bench.async_bench",
           "scale": "fedge.tools.bench.scale", "ingest": "fedge.tools.bench.ingest",
           "brokers": "fedge.tools.bench.brokers", "screening": "fedge.tools.bench.screening"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    head, rest = _split_globals(argv)
    if rest[:2] == ["audit", "leakage"]:  # the audit owns its options
        opts = parser.parse_args(head + ["audit", "leakage"])
        return _guarded(opts, lambda: importlib.import_module("fedge.tools.audit.leakage").main(rest[2:]) or 0)
    if rest[:1] == ["bench"] and rest[1:2] and rest[1] in BENCHES:  # the benchmark owns its options
        opts = parser.parse_args(head + ["bench", rest[1]])
        return _guarded(opts, lambda: importlib.import_module(BENCHES[rest[1]]).main(rest[2:]) or 0)
    args = parser.parse_args(argv)
    return _guarded(args, lambda: _dispatch(args))


# Every known failure (a FedgeError, a missing extra) exits 2: a supervisor should not restart on it
# (hardware/systemd units: RestartPreventExitStatus).
EXIT_ERROR = 2


def _stdout_reader_gone() -> bool:
    """stdout is a pipe whose reader closed it (poll's POLLERR on its write end). Asking the
    stream instead (a second flush) told nothing when the failed write had left nothing buffered:
    `fedge protocol-doc` into a closed pipe ended with a traceback."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no fd (a replaced sys.stdout), no poll
        return False


def _guarded(args, call) -> int:
    """Logging from the global flags, then the command; known failures become one line."""
    from fedge.edge_runtime.logs import setup_logging

    setup_logging(args.verbose, args.log_format)
    try:
        status = call()
        sys.stdout.flush()  # output a closed pipe did not take fails here, not in exit's flush
        return status
    except FedgeError as exc:
        # a NamedConfigError's reason is the name the README gives each refusal (`too_soon`): say it,
        # once (AsyncConflict's message already reads "mode = 'async' (reason): ...")
        named = f" ({exc.reason})" if isinstance(exc, NamedConfigError) and f"({exc.reason})" not in str(exc) else ""
        print(f"fedge: error: {type(exc).__name__}{named}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", EXIT_ERROR)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe or socket broke: not ours to hide
        # `fedge device probe | head -1`: the reader of stdout left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1
    except OSError as exc:
        if not _path_error(exc):
            raise
        # A path the user named that cannot be read or made (a folder for a file, /proc/x, an
        # output path under a file): their input, said in one line. Not for the two services:
        # exit 2 tells systemd never to restart them, and a path missing for a moment (a disk
        # mounted late) must stay a crash it restarts; nor for every OSError (a broker that
        # refuses a connection at boot).
        if (args.command, getattr(args, "coordinator_command", None), getattr(args, "device_command", None)) in (
                ("coordinator", "serve", None), ("device", None, "run")):
            raise
        print(f"fedge: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        extra = COMMAND_EXTRAS.get(args.command, EXTRAS[top])
        print(f"fedge: error: `fedge {args.command}` needs the {top!r} module from the [{extra}] extra: "
              f"pip install \"<fedge checkout or fedge-*.whl>[{extra}]\" (e.g. pip install -e '.[{extra}]')",
              file=sys.stderr)
        return EXIT_ERROR


# OSErrors that say a path the user named is unusable. Beside the named subclasses: a name too
# long for the file system (`build-artifacts <300 characters>` and `bench train-step --models`
# were a traceback), a symlink loop, a read-only file system.
_PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS)


def _path_error(exc: OSError) -> bool:
    return (isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                             FileExistsError)) or (type(exc) is OSError and exc.errno in _PATH_ERRNOS))


def _split_globals(argv: list[str]) -> tuple[list[str], list[str]]:
    """The global options before the subcommand, and the rest."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-format" else 1
    return argv[:i], argv[i:]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedge")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedge", description="Federated training at the edge.")
    parser.add_argument("--version", action="version", version=f"fedge {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--log-format", choices=("text", "json", "journald"), default="text",
                        help="json: one object per line; journald: no timestamp, syslog level prefix")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="run a simulated fleet in one process")
    from fedge.tools.simulate.cli import add_arguments
    from fedge.tools.simulate.config import DATASETS, PARTITIONS

    # `data split` splits a shipped data set; synthetic is generated per device (simulate --dataset synthetic)
    SPLITTABLE = tuple(d for d in DATASETS if d != "synthetic")  # noqa: N806
    add_arguments(p)

    p = sub.add_parser("build-artifacts", help="build a model's ONNX graphs, ORT artifacts and manifest")
    p.add_argument("spec", nargs="?", help="spec TOML file or built-in name (e.g. mnist-mlp-lora)")
    p.add_argument("outdir", type=path_arg)
    from fedge.models.import_cli import add_import_arguments

    add_import_arguments(p, path_arg)
    p.add_argument("--ort-training", choices=("auto", "yes", "no"), default="auto",
                   help="also generate onnxruntime-training artifacts (needs the training build)")

    p = sub.add_parser("pretrain", help="train a model centrally on a proxy split no device holds; write it as ONNX")
    from fedge.tools.pretrain import add_arguments as add_pretrain

    add_pretrain(p)

    p = sub.add_parser("data", help="write per-device .npz files from a dataset shipped in a wheel")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("split",
                        help="split a dataset over N devices: DIR/<device>.npz (x_train, y_train, x_test, y_test)")
    d.add_argument("--dataset", choices=SPLITTABLE, default="mnist5k")
    d.add_argument("--devices", type=int, default=2)
    d.add_argument("--partition", choices=PARTITIONS, default="dirichlet")
    d.add_argument("--alpha", type=float, default=None, help="dirichlet: the concentration (default 0.1)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True, type=path_arg)
    from fedge.tools.fleet_moments import add_combine_arguments, add_moments_arguments

    add_combine_arguments(dsub.add_parser("combine-moments", help="pool devices' `fedge device moments` files "
                                          "into the fleet statistics a device's [data] statistics reads"))

    p = sub.add_parser("device", help="run a device agent on a board, or show what its probes read")
    dev = p.add_subparsers(dest="device_command", required=True)
    d = dev.add_parser("run", help="connect to the broker and train when asked (runs until SIGTERM)")
    d.add_argument("--config", required=True, type=path_arg, help="device TOML (see edge_runtime/device_config.py)")
    d = dev.add_parser("init", help="write a commented device.toml to edit")
    d.add_argument("--out", default="device.toml", type=path_arg,
                   help="where to write it (kept if it exists; default %(default)s)")
    d.add_argument("--id", dest="device_id", default="pi-001", help="device id = broker username")
    d.add_argument("--broker", default="mqtt://localhost:1883", help="broker url")
    d.add_argument("--data", default="/var/lib/fedge/data.npz", type=path_arg, help="the device's .npz data file")
    d.add_argument("--state-dir", default="/var/lib/fedge", type=path_arg, help="where the device keeps its state")
    d.add_argument("--force", action="store_true", help="replace an existing file")
    d = dev.add_parser("probe", help="print battery, link, temperature, CPU and memory facts and the verdict")
    d.add_argument("--config", type=path_arg, help="device TOML: use its [eligibility] policy and [probe] root")
    d.add_argument("--root", default=None, type=path_arg, help="read sysfs/procfs under this root (default /)")
    d.add_argument("--json", action="store_true", help="facts, sources and verdict as JSON")
    d = dev.add_parser("export", help="write the device's personalized model as one standalone ONNX file")
    from fedge.tools.device_export import add_arguments as add_export

    add_export(d)
    add_moments_arguments(dev.add_parser("moments", help="write this device's training count, mean and spread "
                                         "per feature, for `fedge data combine-moments`"))

    p = sub.add_parser("coordinator", help="the coordinator service")
    co = p.add_subparsers(dest="coordinator_command", required=True)
    c = co.add_parser("serve", help="run rounds over MQTT (runs until SIGTERM, or [service] rounds)")
    c.add_argument("--config", required=True, type=path_arg, help="coordinator TOML (see coordinator/service.py)")
    c.add_argument("--role", choices=("leader", "worker"), default="leader",
                   help="leader: the coordinator (default); worker: an aggregator worker of a sharded fleet "
                        "([coordinator] shards, state_dsn)")
    c = co.add_parser("privacy", help="ε spent so far and the rounds left, from the coordinator's state")
    state = c.add_mutually_exclusive_group(required=True)
    state.add_argument("--state", type=path_arg,
                       help="the coordinator's state_db (SQLite), or a postgresql:// DSN; read only")
    state.add_argument("--state-dsn", type=path_arg, help="the coordinator's state_dsn (PostgreSQL); read only")
    c.add_argument("--json", action="store_true", help="the report as JSON, with ε after each charged round")
    c = co.add_parser("forget-devices", help="forget the registered devices not seen for N days (the service stopped)")
    c.add_argument("--config", required=True, type=path_arg, help="the coordinator TOML `serve` runs")
    c.add_argument("--unseen-days", required=True, type=float, help="forget devices unseen this many days")
    c.add_argument("--dry-run", action="store_true", help="list what would be forgotten; change nothing")
    c.add_argument("--json", action="store_true", help="the result as JSON")

    p = sub.add_parser("provision", help="create device/coordinator credentials, certificates and broker files")
    try:
        from fedge.tools.provision import add_arguments as add_provision
    except ImportError:  # pragma: no cover - the ops extra is not installed
        add_provision = None
    if add_provision is not None:
        add_provision(p)

    sub.add_parser("protocol-doc", help="print the wire protocol for third-party device clients (docs/PROTOCOL.md)")
    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bench = p.add_subparsers(dest="bench", required=True)
    bench.add_parser("train-step", help="time one training step per backend (see: fedge bench train-step -h)")
    bench.add_parser("heterogeneity",
                     help="algorithms x partitions x personalization (see: fedge bench heterogeneity -h)")
    bench.add_parser("robustness", help="attacks x defences (see: fedge bench robustness -h)")
    bench.add_parser("mqtt", help="a round of N devices over Mosquitto vs raw paho (see: fedge bench mqtt -h)")
    bench.add_parser("brokers", help="messages/s through Mosquitto vs a two-node ejabberd cluster "
                     "(see: fedge bench brokers -h)")
    bench.add_parser("privacy", help="accuracy against ε, central DP (see: fedge bench privacy -h)")
    bench.add_parser("screening", help="guard-set screening's time per round against its size "
                     "(see: fedge bench screening -h)")
    p = sub.add_parser("audit", help="what the coordinator can learn (see: fedge audit leakage -h)")
    audit = p.add_subparsers(dest="audit", required=True)
    audit.add_parser("leakage", help="reconstruct inputs from plain updates and from SecAgg sums; JSON and PNG")
    bench.add_parser("async", help="sync FedAvg vs FedBuff on a virtual clock (see: fedge bench async -h)")
    bench.add_parser("secagg", help="secure aggregation: bytes, device CPU, unmask time (see: fedge bench secagg -h)")
    bench.add_parser("scale", help="the simulator's peak RSS and wall time at 1,000-10,000 devices "
                     "(see: fedge bench scale -h)")
    bench.add_parser("ingest", help="coordinator ingest rate vs raw paho, its decode/validate/aggregate MB/s, "
                                    "durable writes per device task (see: fedge bench ingest -h)")

    return parser


def _dispatch(args) -> int:
    if args.command == "simulate":
        from fedge.tools.simulate.cli import run

        return run(args)
    if args.command == "build-artifacts":
        from fedge.models.build import build_artifacts
        from fedge.models.import_cli import spec_from_args

        manifest = build_artifacts(spec_from_args(args), args.outdir,
                                   ort_training={"auto": None, "yes": True, "no": False}[args.ort_training])
        print(f"built {manifest.name} (model_id {manifest.model_id}) in {args.outdir}: "
              f"{', '.join(sorted(manifest.files))}")
        return 0
    if args.command == "device":
        return _device(args)
    if args.command == "pretrain":
        from fedge.tools.pretrain import run as run_pretrain

        return run_pretrain(args)
    if args.command == "data" and args.data_command == "combine-moments":
        from fedge.tools.fleet_moments import run_combine

        return run_combine(args)
    if args.command == "data":
        return _data_split(args)
    if args.command == "coordinator" and args.coordinator_command == "privacy":
        import json

        from fedge.coordinator.dp.report import privacy_report, read_ledger, read_pg_ledger, render

        report = privacy_report(read_pg_ledger(args.state_dsn) if args.state_dsn else read_ledger(args.state))
        print(json.dumps(report, indent=2) if args.json else render(report))
        return 0
    if args.command == "coordinator" and args.coordinator_command == "forget-devices":
        import time

        from fedge.coordinator.forget_devices import forget_from_config, render, summary_json

        result, cap = forget_from_config(args.config, args.unseen_days, now_wall=time.time(), dry_run=args.dry_run)
        print(summary_json(result, cap) if args.json else render(result, cap))
        return 0
    if args.command == "coordinator":
        from fedge.coordinator.service import load_service_config, run_service

        return run_service(load_service_config(args.config), args.role)
    if args.command == "protocol-doc":
        from fedge.tools.protocol_doc import main as print_protocol

        return print_protocol()
    if args.command == "provision":
        from fedge.tools.provision import run as run_provision

        return run_provision(args) or 0
    raise AssertionError(args)


def _data_split(args) -> int:
    import io
    from pathlib import Path

    import numpy as np

    from fedge.edge_runtime.kernel.files import atomic_write_bytes
    from fedge.models.output_dir import claim, write_record
    from fedge.tools.datasets import build_federated
    from fedge.tools.simulate.config import DIRICHLET_ALPHA
    from fedge.tools.simulate.flag_checks import check_alpha_applies

    check_alpha_applies(args.partition, args.alpha)
    if args.seed < 0:  # numpy's generators take no negative seed
        raise ConfigError(f"--seed {args.seed}: must be >= 0")
    data = build_federated(args.dataset, args.devices, args.partition, args.seed,
                           alpha=DIRICHLET_ALPHA if args.alpha is None else args.alpha)
    out = Path(args.out)
    written = [f"{client.client_id}.npz" for client in data.clients]
    record = out / ".fedge-data.json"  # what data split wrote there (models/output_dir.py)
    claim(out, written, record.name, "data split", device_dir="")  # never over a file fedge did not write
    for client in data.clients:
        buf = io.BytesIO()
        np.savez(buf, x_train=client.x_train, y_train=client.y_train, x_test=client.x_test, y_test=client.y_test)
        atomic_write_bytes(out / f"{client.client_id}.npz", buf.getvalue())
    write_record(record, written, "fedge data split")
    print(f"wrote {len(data.clients)} files to {out} ({data.name}, {args.partition}; ids "
          f"{data.clients[0].client_id}...)")
    return 0


def _device(args) -> int:
    if args.device_command == "export":
        from fedge.tools.device_export import run as run_export

        return run_export(args)
    if args.device_command == "moments":
        from fedge.tools.fleet_moments import run_moments

        return run_moments(args)
    if args.device_command == "run":
        from fedge.edge_runtime.device_config import load_device_config
        from fedge.edge_runtime.run import run_device

        return run_device(load_device_config(args.config))
    if args.device_command == "init":
        from fedge.edge_runtime.device_init import write_device_toml

        path = write_device_toml(args.out, device_id=args.device_id, broker_url=args.broker, data_npz=args.data,
                                 state_dir=args.state_dir, force=args.force)
        print(f"wrote {path}: edit device_id, [broker] and [data], then: fedge device run --config {path}")
        return 0
    import json
    from pathlib import Path

    from fedge.edge_runtime.eligibility import EligibilityPolicy
    from fedge.edge_runtime.probes import SystemProbe, describe, render

    policy, root = EligibilityPolicy(), "/"
    if args.config:
        from fedge.edge_runtime.device_config import ProbeConfig
        from fedge.edge_runtime.kernel.configfile import from_dict, load_toml

        raw, name = load_toml(args.config), Path(args.config).name  # only [eligibility] and [probe] matter here
        policy = from_dict(EligibilityPolicy, raw.get("eligibility", {}), name, "eligibility")
        root = from_dict(ProbeConfig, raw.get("probe", {}), name, "probe").root  # `probe = 1` was a traceback
    root = args.root or root
    if not Path(root).is_dir():  # every reading would be "unknown": say why instead
        raise ConfigError(f"probe root {root!r}: no such folder (it holds the sys/ and proc/ the probe reads)")
    # One second of CPU accounting: long enough that fedge's own start-up does not dominate it.
    report = describe(SystemProbe(root=root, metered_wait_s=3.0), policy, settle_s=1.0)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
