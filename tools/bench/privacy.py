"""`fedge bench privacy`: accuracy against the privacy budget, on a non-IID population.

    fedge bench privacy --json out.json [--quick] [--devices 1000] [--clients-per-round 100]
                        [--rounds 30] [--epsilons 1,2,4,8,inf] [--delta 1e-6]

Each ε is a full simulated run (real device code, real coordinator, real onnxruntime) on
synthetic(α, β) (tools/synthetic.py), or with --data label-skew on one global concept with
Dirichlet label mixes (label_skew.py; there the global model learns), every device at least 20
training examples, with
central DP-FedAvg: z calibrated so that the run's rounds spend exactly ε (dp-accounting, RDP,
fixed-size sampling of clients_per_round of the population, or with --sampling poisson each device
with probability clients_per_round / population), adaptive clipping on the median
norm; ε = inf is the same run without DP. With "distributed" among --mechanisms, each finite ε
also runs distributed DP under secure aggregation: the same calibrated z, adaptive clipping on
the median from S = --distributed-clip (the clipped-count bit noised by the devices inside the
secure sum; --distributed-clipping fixed keeps S), the devices' discrete Gaussian shares
calibrated for --distributed-quorum masked inputs, --bits field bits per coordinate.

Output JSON (schema 1): benchmark "privacy", population, clients_per_round, rounds, data
(name, kind, alpha, beta, examples per device min/median/max), wall_seconds,
    runs: list, one per (mechanism, ε):
        mechanism               "none" (ε = inf), "central" or "distributed"
        clipping                "adaptive" or "fixed" (--distributed-clipping); min_inputs: the quorum
                                the distributed noise is calibrated for
        epsilon                 the target ε, null for none; epsilon_spent: the ledger's ε at the end
        delta, bits             δ; bits per coordinate on the wire: the field's m (distributed), null otherwise
        noise_multiplier        z (null for none); clip_norm: S the run started with
        sampling                "fixed" or "poisson" (--sampling; central only), null for none
        quant_bits, topk_fraction, error_feedback  the devices' update compression (--quant-bits,
                                --topk, --no-error-feedback); null for distributed (secure
                                aggregation's own encoding); personal_head_from_global (the
                                devices' first personal head, --personal-head-from-global); bytes_up:
                                the run's uplink bytes
        epochs, batch_size, lr  the devices' local training
        global_accuracy         final global model on the union of held-out splits
        personalized_accuracy   mean over devices of their personalized model on their own split
        personalized_accuracy_min  the worst device; accuracy_curve: global accuracy per round;
        smallest_devices_global_accuracy, smallest_devices_personalized_accuracy: the mean over
                                the 10% of devices with the fewest training examples (smallest_devices
                                of them, at most smallest_devices_max_examples examples each)
        rounds_committed        rounds that committed (a secure round below its quorum is abandoned)
A PNG beside the JSON plots both accuracies against ε.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedge.coordinator.dp.config import SAMPLINGS
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.protocol import QUANT_BITS, CompressionSpec
from fedge.tools.bench.hetero_metrics import accuracy_text
from fedge.tools.beside_json import check_beside, png_metadata
from fedge.tools.cli_args import MAX_COUNT, MAX_SEED, int_in, out_file_arg
from fedge.tools.plots import pyplot


@dataclass(frozen=True)
class PrivacyGrid:
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, math.inf)
    delta: float = 1e-6
    devices: int = 1000
    clients_per_round: int = 100
    rounds: int = 30
    # "synthetic": synthetic(α, β) of FedProx (Li et al. 2020), non-IID in models and inputs; every
    # device labels by its own model, so no global model beats chance by much. "label-skew": one
    # global concept, each device its own label mix (Dirichlet `alpha`) and size (bench/label_skew.py,
    # as `fedge bench async` uses): a task where the global model learns, so DP's cost shows.
    data: str = "synthetic"
    alpha: float = 0.5  # synthetic: models differ; label-skew: the Dirichlet concentration of label mixes
    beta: float = 0.5  # synthetic only: inputs differ
    clip_norm: float = 0.5  # where adaptive clipping starts
    seed: int = 0
    mechanisms: tuple[str, ...] = ("central", "distributed")
    bits: int = 16  # distributed: field bits per coordinate on the wire
    distributed_clip: float = 0.5  # distributed: S (where adaptive clipping starts, or the fixed S)
    # distributed: "adaptive" (the median, as central; the count rides in the secure sum) or "fixed"
    distributed_clipping: str = "adaptive"
    distributed_quorum: int = 90  # distributed: masked inputs a round needs; the noise is calibrated for these
    # Local training (None: the simulator's preset, 2 epochs of batch 20). The median device holds
    # 30 examples, so the preset is 4 steps a task.
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    # The server step (coordinator strategies). "fedavgm": server momentum, an average of the
    # noisy aggregates over about 1/(1-β) rounds (DP-FedAvgM); the noise of a round is
    # independent of the last, the signal is not, so momentum keeps the signal and damps the noise.
    strategy: str = "fedavg"
    # How central DP's rounds are drawn and charged: "fixed" (100 of the population, replace-one) or
    # "poisson" (each device with q = 100 / population, add-or-remove-one: about half the noise for
    # the same ε). Distributed DP runs fixed-size cohorts only (coordinator/dp/config.py).
    sampling: str = "fixed"
    # The devices' update compression (the device clips to S first, then quantizes and sparsifies, so
    # what it sends stays within S). Top-k runs under central DP and without DP only: secure
    # aggregation needs every device to send the same coordinates (its own keep_fraction).
    quant_bits: int = 8
    topk_fraction: float = 1.0
    error_feedback: bool = True  # keep what compression dropped and send it with the next update
    personal_head_from_global: bool = False  # a device's first task starts its personal head from the global one

    def __post_init__(self) -> None:
        # the devices' own checks (ValueError naming the field), before any data set is built
        CompressionSpec(quant_bits=self.quant_bits, topk_fraction=self.topk_fraction,
                        error_feedback=self.error_feedback)
        if self.devices > MAX_COUNT:  # 10**30: a traceback from numpy
            raise ValueError(f"--devices {self.devices}: at most {MAX_COUNT:,}")
        # each was a ValueError traceback from the sampler or the data set, inside the first run
        if not 1 <= self.clients_per_round <= self.devices:
            raise ValueError(f"--clients-per-round {self.clients_per_round}: need 1 to --devices ({self.devices})")
        if not (0 <= self.alpha < math.inf and 0 <= self.beta < math.inf):
            raise ValueError(f"--alpha {self.alpha} --beta {self.beta}: need both >= 0 and finite")
        if self.data == "label-skew" and not self.alpha > 0:  # a Dirichlet concentration
            raise ValueError(f"--alpha {self.alpha}: --data label-skew needs a Dirichlet concentration > 0")
        if not 0 < self.delta < 1:  # 2 (or nan) once reached the accountant's search, a misleading error
            raise ValueError(f"--delta {self.delta}: must be in (0, 1), e.g. 1e-6")
        unknown = sorted(set(self.mechanisms) - {"central", "distributed"})
        if unknown or not self.mechanisms:
            raise ValueError(f"--mechanisms {','.join(self.mechanisms)}: use central, distributed or both")
        if not self.epsilons or not all(e > 0 for e in self.epsilons):  # nan fails too
            raise ValueError(f"--epsilons {self.epsilons}: each must be > 0 (inf = no DP)")
        if self.quant_bits == 4 and "distributed" in self.mechanisms:
            raise ValueError("--quant-bits 4 runs with --mechanisms central only: under secure aggregation the "
                             "devices quantize into the field (--bits)")
        if self.topk_fraction < 1.0 and "distributed" in self.mechanisms:
            raise ValueError("--topk below 1 runs with --mechanisms central only: secure aggregation "
                             "sums the same coordinates from every device")


# The final round's numbers for the 10% of devices with the fewest training examples (simulate/scoring.py)
SMALLEST = ("smallest_devices", "smallest_devices_max_examples", "smallest_devices_global_accuracy",
            "smallest_devices_personalized_accuracy")
QUICK = PrivacyGrid(epsilons=(2.0, 8.0, math.inf), devices=100, clients_per_round=10, rounds=5, distributed_quorum=8)


def run_config(grid: PrivacyGrid, epsilon: float, mechanism: str, z: float | None = None):
    """The simulator's config of one run (epsilon inf: no DP); z: the noise multiplier, None =
    calibrated for epsilon (seconds of search: a check of the configs passes any z)."""
    from fedge.coordinator.dp.calibrate import noise_multiplier_for
    from fedge.coordinator.dp.config import PrivacyConfig
    from fedge.coordinator.secagg.config import SecAggConfig
    from fedge.tools.simulate.config import sim_config

    private = math.isfinite(epsilon)
    distributed = private and mechanism == "distributed"
    sampling = "fixed" if distributed else grid.sampling
    if private and z is None:
        z = noise_multiplier_for(epsilon, grid.delta, grid.rounds, grid.devices, grid.clients_per_round, sampling)
    clip = grid.distributed_clip if distributed else grid.clip_norm
    adaptive = private and not (distributed and grid.distributed_clipping == "fixed")
    privacy = PrivacyConfig(enabled=True, target_epsilon=epsilon, delta=grid.delta, noise_multiplier=z,
                            clip_norm=clip, target_quantile=0.5 if adaptive else 0.0,
                            mechanism="distributed" if distributed else "central",
                            sampling=sampling) if private else PrivacyConfig()
    secure = {"secure_aggregation": SecAggConfig(enabled=True, bits=grid.bits),
              "min_reports": grid.distributed_quorum} if distributed else {}
    local = {k: v for k, v in (("epochs", grid.epochs), ("batch_size", grid.batch_size), ("lr", grid.lr))
             if v is not None}
    return sim_config(devices=grid.devices, rounds=grid.rounds, clients_per_round=grid.clients_per_round,
                      over_selection=1.0, aggregator="mean", weighting="equal", privacy=privacy, seed=grid.seed,
                      strategy=grid.strategy, quant_bits=grid.quant_bits, topk_fraction=grid.topk_fraction,
                      error_feedback=grid.error_feedback, personal_head_from_global=grid.personal_head_from_global,
                      **secure, **local)


def run_one(grid: PrivacyGrid, data, epsilon: float, mechanism: str = "central") -> dict:
    from fedge.tools.simulate.fleet import run_simulation

    private = math.isfinite(epsilon)
    distributed = private and mechanism == "distributed"
    cfg = run_config(grid, epsilon, mechanism)
    dp = cfg.coordinator.privacy
    z, sampling, clip, adaptive = dp.noise_multiplier if private else None, dp.sampling, dp.clip_norm, \
        dp.target_quantile > 0
    started = time.perf_counter()
    result = run_simulation(cfg, data=data)
    last = result.rounds[-1]
    return {"mechanism": mechanism if private else "none", "epsilon": epsilon if private else None,
            "epsilon_spent": last.get("epsilon"), "delta": grid.delta, "bits": grid.bits if distributed else None,
            "noise_multiplier": z, "sampling": sampling if private else None,
            "strategy": grid.strategy,
            # secure aggregation sends its own encoding (fp32 into the field, dense, no error feedback)
            "quant_bits": None if distributed else grid.quant_bits,
            "topk_fraction": None if distributed else grid.topk_fraction,
            "error_feedback": None if distributed else grid.error_feedback,
            "personal_head_from_global": grid.personal_head_from_global,
            "bytes_up": sum(r["bytes_up"] for r in result.rounds),
            "epochs": cfg.coordinator.hyper.epochs,
            "batch_size": cfg.coordinator.hyper.batch_size, "lr": cfg.coordinator.hyper.lr,
            "clipping": None if not private else "adaptive" if adaptive else "fixed",
            "min_inputs": grid.distributed_quorum if distributed else None,
            "rounds_committed": sum(bool(r["committed"]) for r in result.rounds),
            "clip_norm": clip if private else None, "global_accuracy": last["global_accuracy"],
            "personalized_accuracy": last["personalized_accuracy_mean"],
            "personalized_accuracy_min": last["personalized_accuracy_min"], "rounds_run": len(result.rounds),
            **{k: last[k] for k in SMALLEST if k in last},
            "accuracy_curve": [r["global_accuracy"] for r in result.rounds],
            "wall_seconds": time.perf_counter() - started}


DATA = ("synthetic", "label-skew")


def population(grid: PrivacyGrid):
    """The grid's data set: every device at least 20 training examples, either way."""
    from fedge.tools.synthetic import synthetic

    from .label_skew import label_skew

    if grid.data == "label-skew":
        return label_skew(grid.devices, grid.alpha, seed=grid.seed)
    if grid.data == "synthetic":
        return synthetic(grid.devices, grid.alpha, grid.beta, seed=grid.seed)
    raise ValueError(f"data must be one of {DATA}, got {grid.data!r}")


def run(grid: PrivacyGrid, json_path, progress=print) -> dict:
    started = time.perf_counter()
    check_beside(json_path, (".png",), "fedge bench privacy", lambda doc: doc.get("benchmark") == "privacy")
    private = [e for e in grid.epsilons if math.isfinite(e)][:1]
    for mechanism in grid.mechanisms if private else ():  # `--bits 0` was refused by the first distributed
        run_config(grid, private[0], mechanism, z=1.0)  # run, after every central one (81 s with --quick)
    data = population(grid)
    sizes = [len(c.y_train) for c in data.clients]
    doc = {"schema": 1, "benchmark": "privacy", "population": grid.devices,
           "clients_per_round": grid.clients_per_round, "rounds": grid.rounds,
           "data": {"name": data.name, "kind": grid.data, "alpha": grid.alpha,
                    "beta": grid.beta if grid.data == "synthetic" else None, "train_examples_min": min(sizes),
                    "train_examples_median": float(np.median(sizes)), "train_examples_max": max(sizes)},
           "runs": []}
    for epsilon in grid.epsilons:
        for mechanism in grid.mechanisms if math.isfinite(epsilon) else ("none",):
            row = run_one(grid, data, epsilon, mechanism)
            doc["runs"].append(row)
            progress(progress_line(row, epsilon))
            doc["wall_seconds"] = time.perf_counter() - started  # written after every run: a cut grid keeps its rows
            atomic_write_bytes(Path(json_path), json.dumps(doc, indent=2, default=_jsonable).encode())
    plot(doc, Path(json_path).with_suffix(".png"))
    return doc


def progress_line(row: dict, epsilon: float) -> str:
    """One run's line; '-' for an accuracy that no device scored in the final round (None), as
    `fedge simulate` prints an empty evaluation."""
    return (f"{row['mechanism']} ε={epsilon:g}: global {accuracy_text(row['global_accuracy'])}, personalized "
            f"{accuracy_text(row['personalized_accuracy'])} (z={row['noise_multiplier'] or 0:.3g}, "
            f"{row['wall_seconds']:.0f} s)")


def _jsonable(value):
    if isinstance(value, float) and math.isinf(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def plot(doc: dict, path: Path) -> Path | None:
    """Global and personalized accuracy against ε (log scale); the non-private run as lines. An
    accuracy no device scored (None) is left out: a gap in a curve, no line."""
    plt = pyplot()
    if plt is None:
        return None
    private = [r for r in doc["runs"] if r["mechanism"] in ("central", "distributed")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, color in (("global_accuracy", "global", "C0"), ("personalized_accuracy", "personalized", "C1")):
        for mechanism, style in (("central", "-"), ("distributed", ":")):
            rows = sorted((r for r in private if r["mechanism"] == mechanism), key=lambda r: r["epsilon"])
            if rows:
                bits = f", {rows[0]['bits']} bits" if rows[0]["bits"] else ""
                ax.plot([r["epsilon"] for r in rows], [r[key] for r in rows], marker="o", ls=style, color=color,
                        label=f"{label}, {mechanism} DP{bits}")
        for r in doc["runs"]:
            if r["mechanism"] == "none" and r[key] is not None:  # None: no device scored its final round
                ax.axhline(r[key], color=color, ls="--", label=f"{label}, no DP")
    if private:  # only the non-private run: its lines alone, on a linear axis
        ax.set_xscale("log")
    ax.set(xlabel=f"ε (δ={doc['runs'][0]['delta']:g}, user-level)", ylabel="final accuracy", ylim=(0, 1),
           title=f"{doc['data']['name']}: {doc['population']} devices, {doc['clients_per_round']} a round, "
                 f"{doc['rounds']} rounds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=png_metadata("bench privacy"))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench privacy", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True,
                   help="write the results here (and a PNG beside)")
    p.add_argument("--quick", action="store_true", help="100 devices, 10 a round, 5 rounds, ε in {2, 8, inf}")
    p.add_argument("--devices", type=int_in(1), default=None, help="population (default 1000)")
    p.add_argument("--clients-per-round", type=int_in(1), default=None, help="devices asked per round (default 100)")
    p.add_argument("--rounds", type=int_in(1), default=None, help="rounds per run (default 30)")
    p.add_argument("--epsilons", default=None, help="comma list; inf = no DP (default 1,2,4,8,inf)")
    p.add_argument("--delta", type=float, default=None, help="default 1e-6")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None)
    p.add_argument("--mechanisms", default=None, help="comma list of central, distributed (default both)")
    p.add_argument("--bits", type=int, default=None, help="distributed: field bits per coordinate (default 16)")
    p.add_argument("--distributed-clip", type=float, default=None,
                   help="distributed: S, where adaptive clipping starts or the fixed S (default 0.5)")
    p.add_argument("--distributed-clipping", choices=("adaptive", "fixed"), default=None,
                   help="distributed: adaptive (the median norm, as central DP; default) or a fixed S")
    p.add_argument("--distributed-quorum", type=int, default=None,
                   help="distributed: masked inputs a round needs, the noise calibrated for them (default 90)")
    p.add_argument("--data", choices=DATA, default=None,
                   help="synthetic (FedProx's synthetic(α, β), default) or label-skew (one global concept, "
                        "Dirichlet label mixes: the global model learns)")
    p.add_argument("--alpha", type=float, default=None,
                   help="synthetic: how much devices' models differ; label-skew: Dirichlet concentration (0.5)")
    p.add_argument("--beta", type=float, default=None, help="synthetic: how much devices' inputs differ (0.5)")
    p.add_argument("--sampling", choices=SAMPLINGS, default=None,
                   help="central DP's cohorts: fixed-size (default) or Poisson (distributed: always fixed)")
    p.add_argument("--quant-bits", type=int, choices=QUANT_BITS, default=None,
                   help="the devices' update quantization (default 8)")
    p.add_argument("--topk", dest="topk_fraction", type=float, default=None,
                   help="fraction of each tensor's entries sent, after the clip (default 1: dense; central only)")
    p.add_argument("--no-error-feedback", dest="error_feedback", action="store_false", default=None,
                   help="drop what compression leaves out instead of carrying it to the next update")
    p.add_argument("--personal-head-from-global", dest="personal_head_from_global", action="store_true",
                   default=None, help="a device's first task starts its personal head from the global head")
    p.add_argument("--strategy", default=None, help="the server step: fedavg (default), fedavgm, fedadam, ...")
    p.add_argument("--epochs", type=int, default=None, help="local epochs per task (default: the simulator's 2)")
    p.add_argument("--batch-size", type=int, default=None, help="local batch size (default: the simulator's 20)")
    p.add_argument("--lr", type=float, default=None, help="local learning rate (default: the simulator's 0.02)")
    args = p.parse_args(argv)
    grid = QUICK if args.quick else PrivacyGrid()
    overrides = {k: v for k, v in (("devices", args.devices), ("clients_per_round", args.clients_per_round),
                                   ("rounds", args.rounds), ("delta", args.delta), ("seed", args.seed),
                                   ("bits", args.bits), ("distributed_clip", args.distributed_clip),
                                   ("distributed_clipping", args.distributed_clipping),
                                   ("distributed_quorum", args.distributed_quorum), ("epochs", args.epochs),
                                   ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("data", args.data), ("alpha", args.alpha), ("beta", args.beta),
                                   ("strategy", args.strategy), ("sampling", args.sampling),
                                   ("quant_bits", args.quant_bits), ("topk_fraction", args.topk_fraction),
                                   ("error_feedback", args.error_feedback),
                                   ("personal_head_from_global", args.personal_head_from_global))
                 if v is not None}
    if args.mechanisms:
        overrides["mechanisms"] = tuple(args.mechanisms.split(","))
    try:
        if args.epsilons:
            overrides["epsilons"] = tuple(float(e) for e in args.epsilons.split(","))
        grid = replace(grid, **overrides)
    except ValueError as exc:  # a combination the grid refuses: a usage error, not a traceback
        p.error(str(exc))
    run(grid, args.json_path, progress=lambda line: print(line, file=sys.stderr))
    print(f"wrote {args.json_path}")
    return 0
