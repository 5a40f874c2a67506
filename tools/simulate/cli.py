"""`fedge simulate` options and entry point."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import DATASETS, PARTITIONS, PERSONALIZATION, SimConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SimConfig()
    p.add_argument("--devices", type=int, default=d.devices, help="simulated devices (default %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed for data split, sampling and training")
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="dataset shipped in a pip wheel")
    p.add_argument("--data", dest="data_dir", metavar="DIR", help="folder with one .npz per client (x_train, y_train, x_test, y_test)")
    p.add_argument("--partition", choices=PARTITIONS, default=d.partition, help="how the dataset is split over devices")
    p.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration (smaller = more skew)")
    p.add_argument("--classes-per-client", type=int, default=d.classes_per_client, help="labels per device for shards")
    p.add_argument("--model", help="model spec: a TOML file or a built-in name (default: chosen for the data)")
    p.add_argument("--backend", default=d.backend, choices=("auto", "portable", "ort-training", "numpy"))
    p.add_argument("--clients-per-round", type=int, default=d.clients_per_round, help="reports aggregated per round")
    p.add_argument("--over-selection", type=float, default=d.over_selection, help="ask this many times more devices")
    p.add_argument("--epochs", type=int, default=d.epochs, help="local epochs per task")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=d.optimizer)
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9; 0 on ort-training)")
    p.add_argument("--quant-bits", type=int, choices=(32, 8, 4), default=d.quant_bits, help="update quantization")
    p.add_argument("--topk", dest="topk_fraction", type=float, default=d.topk_fraction, help="fraction of entries sent")
    p.add_argument("--no-error-feedback", dest="error_feedback", action="store_false")
    p.add_argument("--transport", choices=("memory", "mqtt"), default=d.transport,
                   help="memory: one process, simulated time; mqtt: device threads and the coordinator through a broker")
    p.add_argument("--broker", dest="broker_url", metavar="URL",
                   help="with --transport mqtt: use this broker (mqtt://host:port); default: start a local Mosquitto")
    p.add_argument("--round-deadline", dest="round_deadline_s", type=float, default=None,
                   help="seconds a round waits for reports (default 600 simulated; 30 real with mqtt)")
    p.add_argument("--profiles", default="", help="with mqtt: device profiles, comma list, assigned round-robin "
                   "(shipped: pi4-ups, jetson-nano, phone-like, flaky-cellular, or TOML paths)")
    p.add_argument("--baselines", default="", help="comma list: local (each device alone), central (pooled data)")
    p.add_argument("--local-epochs", type=int, default=None, help="local-only baseline epochs (default rounds x epochs)")
    p.add_argument("--central-epochs", type=int, default=None,
                   help="centralized baseline epochs (default: the fleet's total compute)")
    p.add_argument("--personalization", choices=PERSONALIZATION, default=d.personalization,
                   help="adapters: LoRA shared + private head; head: body frozen, private head (global head "
                        "shared); finetune: full-model FedAvg, head fine-tuned locally before evaluation; full: "
                        "whole layers shared + private head; none: the global model only")
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps, help="finetune: head-only local steps")
    p.add_argument("--new-devices", type=int, default=d.new_devices,
                   help="hold the last K devices out of training; score them on the final global model")
    p.add_argument("--new-device-steps", type=int, default=d.new_device_steps,
                   help="head-only local steps a new device takes before it is scored again (0 = none)")
    p.add_argument("--strategy", default=d.strategy,
                   help="aggregation: fedavg, fedprox, scaffold, fedavgm, fedadagrad, fedadam, fedyogi")
    for name, what in (("prox-mu", "fedprox proximal weight"), ("server-lr", "server learning rate"),
                       ("server-momentum", "fedavgm momentum"), ("server-beta1", "adaptive: first-moment decay"),
                       ("server-beta2", "adaptive: second-moment decay"), ("server-tau", "adaptive: tau")):
        p.add_argument(f"--{name}", type=float, default=None, help=f"{what} (default: the coordinator's)")
    p.add_argument("--attack", default=None, help="simulate attackers: label_flip, backdoor, sign_flip, scale, gaussian, "
                   "alie, ipm, min_max, min_sum, huge_weight, nan (tools/simulate/attacks.py)")
    p.add_argument("--attackers", type=float, default=d.attackers, help="share of the devices that attack (default %(default)s)")
    p.add_argument("--omniscient", action="store_true", help="colluding attackers also see honest devices' deltas")
    p.add_argument("--aggregator", default=d.aggregator,
                   help="how the coordinator combines a round: mean, norm_bound, median, trimmed_mean, krum, centered_clipping")
    p.add_argument("--bucket-size", type=int, default=d.bucket_size,
                   help="bucketing: average random groups of this many updates before a keep-all aggregator (0 = off)")
    p.add_argument("--out", dest="out_dir", default=None, help="output folder (default: beside --json, or runs/sim)")
    p.add_argument("--json", dest="json_path", help="write the run as JSON here (schema in tools/simulate/report.py)")
    p.add_argument("--plot", dest="plot_path", help="PNG path (default: beside the JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def run(args: argparse.Namespace) -> int:
    from .fleet import check_split_flags, run_simulation
    from .report import HEADER, format_row, format_summary, summarize, write_json, write_plot

    out_dir = args.out_dir or (str(Path(args.json_path).parent) if args.json_path else "runs/sim")
    cfg = SimConfig(
        devices=args.devices, rounds=args.rounds, seed=args.seed, dataset=args.dataset, data_dir=args.data_dir,
        partition=args.partition, alpha=args.alpha, classes_per_client=args.classes_per_client, model=args.model,
        backend=args.backend, clients_per_round=args.clients_per_round, over_selection=args.over_selection,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        quant_bits=args.quant_bits, topk_fraction=args.topk_fraction, error_feedback=args.error_feedback,
        baselines=tuple(b for b in args.baselines.split(",") if b), out_dir=out_dir,
        transport=args.transport, broker_url=args.broker_url,
        round_deadline_s=args.round_deadline_s or (30.0 if args.transport == "mqtt" else 600.0),
        profiles=tuple(x for x in args.profiles.split(",") if x),
        personalization=args.personalization, finetune_steps=args.finetune_steps, new_devices=args.new_devices,
        new_device_steps=args.new_device_steps, strategy=args.strategy, prox_mu=args.prox_mu,
        server_lr=args.server_lr, server_momentum=args.server_momentum, server_beta1=args.server_beta1,
        server_beta2=args.server_beta2, server_tau=args.server_tau, local_epochs=args.local_epochs,
        central_epochs=args.central_epochs, attack=args.attack, attackers=args.attackers, omniscient=args.omniscient,
        aggregator=args.aggregator, bucket_size=args.bucket_size,
    )
    check_split_flags(cfg)
    bar = _progress(cfg.rounds, args.quiet)
    if not args.quiet:
        source = cfg.data_dir or f"{cfg.dataset}, {cfg.partition}" + (f" alpha={cfg.alpha}" if cfg.partition == "dirichlet" else "")
        _say(bar, f"fedge simulate: {cfg.devices if not cfg.data_dir else 'per-file'} devices, {cfg.rounds} rounds, {source}")
        _say(bar, HEADER)

    def on_round(row: dict) -> None:
        if not args.quiet:
            _say(bar, format_row(row))
        if bar is not None:
            bar.update(1)

    result = run_simulation(cfg, on_round=on_round)
    if bar is not None:
        bar.close()
    result.summary["final"] = summarize(result)
    if not args.quiet:
        print(format_summary(result))
    if args.json_path:
        write_json(result, args.json_path)
        plot = write_plot(result, args.plot_path or Path(args.json_path).with_suffix(".png"))
        print(f"wrote {args.json_path}" + (f" and {plot}" if plot else " (no plot: matplotlib not installed)"))
    from .report import failure_cause

    cause = failure_cause(result)
    if cause:
        print(f"fedge: error: {cause}", file=sys.stderr)
        return 1
    return 0


def _progress(total: int, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="round", leave=False, file=sys.stderr)


def _say(bar, line: str) -> None:
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)
