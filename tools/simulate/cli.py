"""`fedge simulate` options and entry point."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from fedge.coordinator.config import coordinator_table, load_coordinator_config
from fedge.coordinator.strategies import STRATEGIES
from fedge.coordinator.unread_keys import UnreadKey, check_written
from fedge.edge_runtime.eligibility import EligibilityPolicy
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import OPTIMIZERS, QUANT_BITS
from fedge.tools.beside_json import check_beside, check_parent_folder
from fedge.tools.cli_args import names_arg, path_arg, standardize_flags
from fedge.tools.standardizing import STATISTICS

from .config import (
    DATASETS,
    DIRICHLET_ALPHA,
    MQTT_ROUND_DEADLINE_S,
    PARTITIONS,
    PERSONALIZATION,
    SIM_COORDINATOR,
    SYNTHETIC_ALPHA,
    SYNTHETIC_BETA,
    SimConfig,
    load_device_tables,
    with_options,
)
from .flag_checks import check_options_apply, check_split_flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    d, c = SimConfig(), SIM_COORDINATOR
    h, z = c.hyper, c.compression
    p.add_argument("--config", metavar="FILE.toml", type=path_arg,
                   help="coordinator settings from this TOML: its [coordinator] table (the file `fedge coordinator "
                        "serve` reads) or a plain coordinator config; the flags below override it. Default: the "
                        "simulator's preset (the coordinator's defaults; 2 epochs of SGD, batch 20, lr 0.02, "
                        "momentum 0.9)")
    p.add_argument("--device-config", metavar="FILE.toml", type=path_arg,
                   help="every device's [eligibility] (used with mqtt "
                   "profiles) and [agent] timings from this device TOML (the file `fedge device run` reads)")
    p.add_argument("--devices", type=int, default=None, help=f"simulated devices (default {d.devices})")
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed for data split, sampling and training (the initial weights come from the model "
                   "spec's init_seed)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help=f"mnist5k, digits (shipped in pip wheels) or synthetic (FedProx's synthetic(α, β), "
                        f"generated: one device per generated client, any number of devices; default {d.dataset})")
    p.add_argument("--data", dest="data_dir", metavar="DIR", type=path_arg,
                   help="folder with one .npz per client (x_train, y_train, x_test, y_test)")
    standardize_flags(p, "every device standardizes its features with the same per-feature mean and std: the "
                      "fleet's, pooled over every device's training split (--standardize-with) (default "
                      "with --data: only when the loaded features are far from standardized, never for an "
                      "imported --model's pretrained inputs, and 8-bit intensities saved as float (integers "
                      "0..255) are read as x / 255 instead, as uint8 is; README, Bring your own data)",
                      "train on --data features as saved, even when they are far from standardized")
    p.add_argument("--standardize-with", choices=STATISTICS, default=None,
                   help="whose mean and std standardizing uses: fleet (pooled over every device's training "
                        "split, from per-device sums) or device (each its own: no statistic leaves a device, "
                        "but under label skew it costs global accuracy). Default: fleet, or device with "
                        "privacy or secure aggregation on")
    p.add_argument("--partition", choices=PARTITIONS, default=None,
                   help=f"how the dataset is split over devices (default {d.partition})")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"dirichlet: the concentration, smaller = more label skew (default {DIRICHLET_ALPHA}); "
                        f"synthetic: α, how much the devices' models differ (default {SYNTHETIC_ALPHA})")
    p.add_argument("--beta", type=float, default=None,
                   help=f"synthetic: β, how much the devices' inputs differ (default {SYNTHETIC_BETA})")
    p.add_argument("--classes-per-client", type=int, default=None,
                   help=f"labels per device for shards (default {d.classes_per_client})")
    p.add_argument("--model", type=path_arg,
                   help="model spec: a TOML file, a built-in name or a folder `fedge build-artifacts` wrote "
                        "(default: chosen for the data)")
    p.add_argument("--backend", default=d.backend, choices=("auto", "portable", "ort-training", "numpy"))
    # Coordinator settings: None = the --config file's value, or the preset's (shown).
    p.add_argument("--clients-per-round", type=int, help=f"reports aggregated per round ({c.clients_per_round})")
    p.add_argument("--over-selection", type=float, help=f"ask this many times more devices ({c.over_selection})")
    p.add_argument("--epochs", type=int, help=f"local epochs per task ({h.epochs})")
    p.add_argument("--batch-size", type=int, help=f"({h.batch_size})")
    p.add_argument("--lr", type=float, help=f"({h.lr})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"({h.optimizer})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum ({h.momentum}; always 0 on ort-training)")
    p.add_argument("--quant-bits", type=int, choices=QUANT_BITS, help=f"update quantization ({z.quant_bits})")
    p.add_argument("--topk", dest="topk_fraction", type=float, help=f"fraction of entries sent ({z.topk_fraction})")
    p.add_argument("--no-error-feedback", dest="error_feedback", action="store_false", default=None)
    p.add_argument("--personal-head-from-global", dest="personal_head_from_global", action="store_true", default=None,
                   help="a device's first task starts its personal head from the global head (hyper)")
    p.add_argument("--clip-norm", type=float,
                   help=f"devices clip their delta to this L2 norm; 0 = none of yours (under norm_bound, dense "
                   f"updates are clipped to the round's bound: [robust.norm] device_clip) ({z.clip_norm})")
    p.add_argument("--norm-bound", type=float, help=f"the coordinator rejects larger deltas; 0 = off ({c.norm_bound})")
    p.add_argument("--transport", choices=("memory", "mqtt"), default=d.transport,
                   help="memory: one process, simulated time; "
                        "mqtt: device threads and the coordinator through a broker")
    p.add_argument("--broker", dest="broker_url", metavar="URL", type=names_arg,
                   help="with --transport mqtt: use this broker (mqtt://host:port); default: start a local Mosquitto")
    p.add_argument("--round-deadline", dest="round_deadline_s", type=float, default=None,
                   help=f"with --transport mqtt: seconds a round waits for reports ({MQTT_ROUND_DEADLINE_S:g}); "
                        f"refused in memory, where devices train in no simulated time (the preset's "
                        f"{c.round_deadline_s:g} s never binds)")
    p.add_argument("--profiles", type=names_arg, help="with mqtt: device profiles, comma list, assigned round-robin "
                   "(shipped: pi4-ups, jetson-nano, phone-like, flaky-cellular, or TOML paths)")
    p.add_argument("--baselines", type=names_arg, help="comma list: local (each device alone), central (pooled data)")
    p.add_argument("--local-epochs", type=int, default=None,
                   help="local-only baseline epochs (default rounds x epochs)")
    p.add_argument("--central-epochs", type=int, default=None,
                   help="centralized baseline epochs (default: the fleet's total compute)")
    p.add_argument("--personalization", choices=PERSONALIZATION, default=d.personalization,
                   help="adapters: LoRA shared + private head; head: body frozen, private head (global head "
                        "shared); finetune: full-model FedAvg, head fine-tuned locally before evaluation; full: "
                        "whole layers shared + private head; none: the global model only")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help=f"finetune: head-only local steps (default {d.finetune_steps})")
    p.add_argument("--new-devices", type=int, default=d.new_devices,
                   help="hold the last K devices out of training; score them on the final global model")
    p.add_argument("--new-device-steps", type=int, default=None,
                   help=f"head-only local steps a new device takes before it is scored again (0 = none; default "
                        f"{d.new_device_steps})")
    p.add_argument("--strategy", help=f"aggregation: {', '.join(STRATEGIES)} ({c.strategy})")
    server_lr = "server learning rate; 0 = the strategy's own: 1, fedavgm 1 - momentum, fedadagrad 0.1, fedadam 0.03"
    for name, what in (("prox-mu", "fedprox proximal weight"), ("server-lr", server_lr),
                       ("server-momentum", "fedavgm momentum"), ("server-beta1", "adaptive: first-moment decay"),
                       ("server-beta2", "adaptive: second-moment decay"), ("server-tau", "adaptive: tau")):
        p.add_argument(f"--{name}", type=float, default=None, help=f"{what} (default: the coordinator's)")
    p.add_argument("--attack", default=None,
                   help="simulate attackers: label_flip, backdoor, sign_flip, scale, gaussian, "
                   "alie, ipm, min_max, min_sum, huge_weight, nan, poison (tools/simulate/attacks.py)")
    p.add_argument("--attackers", type=float, default=None,
                   help=f"share of the devices that attack (default {d.attackers})")
    p.add_argument("--omniscient", action="store_true", help="colluding attackers also see honest devices' deltas")
    p.add_argument("--attack-scale", type=float, default=d.attack_scale,
                   help="sign_flip: the flipped delta's factor; scale, backdoor: the boost "
                   "(default 0: 1 for sign_flip, clients per round / server lr for the others)")
    p.add_argument("--guard-fraction", type=float, default=d.guard_fraction,
                   help="share of a shipped dataset no device holds, given to the coordinator as its guard set: "
                   "the model guard checks each new model on it and norm_bound screens each round's updates "
                   "(default %(default)s: none)")
    p.add_argument("--aggregator", default=None,
                   help=f"how the coordinator combines a round: mean, norm_bound, median, trimmed_mean, krum, "
                   f"centered_clipping ({c.aggregator})")
    p.add_argument("--bucket-size", type=int, default=None,
                   help="bucketing: average random groups of this many updates before a keep-all aggregator (0 = off)")
    p.add_argument("--out", dest="out_dir", default=None, type=path_arg,
                   help="write the run to OUT_DIR/run.json and OUT_DIR/run.png (when no --json names the file)")
    p.add_argument("--json", dest="json_path", type=path_arg,
                   help="write the run as JSON here (schema in tools/simulate/report.py)")
    p.add_argument("--plot", dest="plot_path", type=path_arg,
                   help="PNG path (default: beside the JSON; alone: only the PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")


def run(args: argparse.Namespace) -> int:
    from .fleet import run_simulation
    from .report import HEADER, constant_guess, format_row, format_summary, summarize, write_json, write_plot

    if args.plot_path is not None and (Path(args.plot_path).suffix.lower() != ".png" or Path(args.plot_path).is_dir()):
        # matplotlib takes the format from the suffix: x.svg or x.jpg once failed after the whole run
        # (a traceback), and a path without one was written as PATH.png while fedge said "wrote PATH"
        raise ConfigError(f"--plot {args.plot_path}: the plot is a PNG; name a .png file (not a folder)")
    named_json = bool(args.json_path)
    if named_json and args.plot_path and Path(args.plot_path).resolve() == Path(args.json_path).resolve():
        raise ConfigError(f"--json and --plot both name {args.json_path}: the plot would replace the run's JSON")
    if args.out_dir and not args.json_path:
        args.json_path = str(Path(args.out_dir) / "run.json")
    out_dir = args.out_dir or (str(Path(args.json_path).parent) if args.json_path else "runs/sim")
    cfg = build_config(args, out_dir)
    typed = {name for name in (*COORDINATOR_FLAGS, *TYPED_ONLY) if getattr(args, name) is not None}
    check_split_flags(cfg, typed)
    check_options_apply(cfg, typed)
    # a --json or --plot the user named is theirs to replace; what --out names is checked
    ours = (() if named_json else (".json",)) + (() if args.plot_path else (".png",))
    if args.json_path:
        check_beside(args.json_path, ours, "fedge simulate", lambda doc: {"config", "rounds", "summary"} <= set(doc))
    if args.plot_path:
        check_parent_folder(args.plot_path, "--plot")
    bar = _progress(cfg.rounds, args.quiet)
    if not args.quiet:
        alpha = f" alpha={cfg.split_alpha}" if cfg.partition == "dirichlet" else ""
        source = cfg.data_dir or f"{cfg.dataset}, {cfg.partition}{alpha}"
        if cfg.synthetic:
            source = f"synthetic(alpha={cfg.split_alpha}, beta={cfg.split_beta})"
        devices = cfg.devices if not cfg.data_dir else "per-file"
        _say(bar, f"fedge simulate: {devices} devices, {cfg.rounds} rounds, {source}")
    header = [HEADER]  # with the first row: a run that stops before it (no data, a bad model) ends on its error

    def on_round(row: dict) -> None:
        if not args.quiet:
            while header:
                _say(bar, header.pop())
            _say(bar, format_row(row))
        if bar is not None:
            bar.update(1)

    result = run_simulation(cfg, on_round=on_round)
    if bar is not None:
        bar.close()
    result.summary["final"] = summarize(result)
    result.summary["constant_guess"] = warning = constant_guess(result)
    if warning:
        print(f"fedge: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(result))
    if args.json_path:
        write_json(result, args.json_path)
        plot = write_plot(result, args.plot_path or Path(args.json_path).with_suffix(".png"))
        print(f"wrote {args.json_path}" + (f" and {plot}" if plot else " (no plot: matplotlib not installed)"))
    elif args.plot_path:
        plot = write_plot(result, args.plot_path)
        print(f"wrote {plot}" if plot else "fedge: warning: no plot: matplotlib not installed", file=sys.stderr)
    from .report import failure_cause

    cause = failure_cause(result)
    if cause:
        print(f"fedge: error: {cause}", file=sys.stderr)
        return 1
    return 0


# Flags that set a coordinator, hyper or compression field (config.with_options), by dest.
COORDINATOR_FLAGS = ("clients_per_round", "over_selection", "epochs", "batch_size", "lr", "optimizer", "momentum",
                     "quant_bits", "topk_fraction", "error_feedback", "clip_norm", "norm_bound", "round_deadline_s",
                     "personal_head_from_global", "strategy", "prox_mu", "server_lr", "server_momentum",
                     "server_beta1", "server_beta2", "server_tau", "aggregator", "bucket_size")


# Flags whose default is None on the command line, so that one typed at its default value is still
# seen as typed and refused where it applies to nothing (flag_checks.check_options_apply, and
# check_split_flags for the split flags with --data).
TYPED_ONLY = ("classes_per_client", "finetune_steps", "new_device_steps", "attackers", "devices", "dataset",
              "partition")


def _typed(args: argparse.Namespace, name: str):
    value = getattr(args, name)
    return getattr(SimConfig, name) if value is None else value


def build_config(args: argparse.Namespace, out_dir: str) -> SimConfig:
    """The SimConfig the flags describe: the --config file's coordinator (or the preset),
    then every coordinator flag given on the command line over it."""
    # the file's keys are checked against the run's config, flags applied (check_file_keys below)
    coordinator = load_coordinator_config(args.config, check_unread=False) if args.config else SIM_COORDINATOR
    if not args.config and args.transport == "mqtt":
        coordinator = replace(coordinator, round_deadline_s=MQTT_ROUND_DEADLINE_S)
    given = {name: getattr(args, name) for name in COORDINATOR_FLAGS if getattr(args, name) is not None}
    coordinator = with_options(coordinator, **given)
    if args.config:  # against the run's strategy and aggregator: a flag may have made a key read, or unread
        # --guard-fraction gives the run a guard set (fleet.prepare), which [robust.screen] needs
        guarded = replace(coordinator, guard_set="(--guard-fraction)") if args.guard_fraction else coordinator
        check_file_keys(args.config, guarded, flags_given=bool(given) or bool(args.guard_fraction))
    eligibility, agent = load_device_tables(args.device_config) if args.device_config else (EligibilityPolicy(), None)
    return SimConfig(
        devices=_typed(args, "devices"), rounds=args.rounds, seed=args.seed, dataset=_typed(args, "dataset"),
        data_dir=args.data_dir, standardize=args.standardize, standardize_with=args.standardize_with,
        partition=_typed(args, "partition"),
        alpha=args.alpha, beta=args.beta,
        classes_per_client=_typed(args, "classes_per_client"), model=args.model,
        backend=args.backend, coordinator=coordinator, eligibility=eligibility, agent=agent,
        baselines=tuple(b for b in (args.baselines or "").split(",") if b), out_dir=out_dir,
        transport=args.transport, broker_url=args.broker_url,
        profiles=tuple(x for x in (args.profiles or "").split(",") if x),
        personalization=args.personalization, finetune_steps=_typed(args, "finetune_steps"),
        new_devices=args.new_devices, new_device_steps=_typed(args, "new_device_steps"),
        local_epochs=args.local_epochs, central_epochs=args.central_epochs, attack=args.attack,
        attackers=_typed(args, "attackers"), omniscient=args.omniscient, attack_scale=args.attack_scale,
        guard_fraction=args.guard_fraction,
    )


def check_file_keys(path, coordinator, flags_given: bool = False) -> None:
    """Refuse a key of the --config file that the run leaves unread, flags applied (`--strategy
    fedavg` over a file's fedprox and prox_mu), and keep one the flags make read (`--strategy
    fedprox` over a file's prox_mu and fedavg): the file loaded without its own check."""
    try:
        check_written(coordinator_table(path)[0], coordinator)
    except UnreadKey as exc:
        raise UnreadKey(exc.key, f"{Path(path).name}: {exc}{' (with the flags given)' if flags_given else ''}") \
            from None


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
