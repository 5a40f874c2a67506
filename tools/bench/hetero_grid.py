"""The heterogeneity benchmark's grid: what runs (jobs), and running one job.

A job is one simulation (or one pair of baselines) described by a SimConfig, so a worker
process needs nothing else. Four kinds:

    cell         (dataset, partition, algorithm, personalization on/off): the main grid
    baselines    (dataset, partition): local-only (adapters spec) and centralized (global spec)
    compression  one uplink compression setting, error feedback on or off, on one model:
                 "adapters" (LoRA + global head, as personalization off) or "full" (the whole
                 layer + global head: full-model FedAvg), for compression_rounds rounds
    mode         one personalization mode on Dirichlet 0.1, with new devices held out

Every job runs the real device runtimes and coordinator (tools/simulate/fleet.py) in its own
temporary directory. Personalization "on" is the adapters mode (LoRA shared, private head);
"off" is the none mode (the same LoRA layer, global head only).
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.tools.cli_args import MAX_COUNT
from fedge.tools.datasets import FederatedDataset
from fedge.tools.simulate import baselines as baseline_runs
from fedge.tools.simulate.config import SimConfig, sim_config, with_options
from fedge.tools.simulate.fleet import load_data, prepare, run_simulation

# label -> SimConfig fields; the labels are what the JSON and the report call partitions.
PARTITIONS = {
    "iid": {"partition": "iid"},
    "dirichlet-0.5": {"partition": "dirichlet", "alpha": 0.5},
    "dirichlet-0.1": {"partition": "dirichlet", "alpha": 0.1},
    "shards-2": {"partition": "shards", "classes_per_client": 2},
    "quantity": {"partition": "quantity"},
    "feature": {"partition": "feature"},
}
GIVEN = "given"  # the partition of a --data DIR: its files are the clients

# name -> coordinator strategy options. Server learning rates for the adaptive optimizers are
# the coordinator's defaults (0.03); FedAvgM's momentum is damped by a server lr < 1 so the
# effective step (lr / (1 - momentum)) stays near FedAvg's.
ALGORITHMS = {
    "fedavg": {},
    "fedprox": {"prox_mu": 0.1},
    "scaffold": {},
    "fedavgm": {"server_lr": 0.5, "server_momentum": 0.5},
    "fedadam": {},
    "fedyogi": {},
}

# label -> (quant_bits, topk_fraction)
COMPRESSION = {
    "dense-fp32": (32, 1.0),
    "int8": (8, 1.0),
    "int8-top10%": (8, 0.1),
    "int8-top1%": (8, 0.01),
    "int4-top1%": (4, 0.01),
}
# The compression sweep's models: label -> (personalization mode, finetune steps). "full" is
# the finetune mode's model (whole layer + global head) scored as it is, without tuning.
COMPRESSION_MODELS = {"adapters": ("none", 0), "full": ("finetune", 0)}
MODES = ("adapters", "head", "finetune", "full", "none")
# The grid's coordinator: its defaults, 10 reports a round, 5 epochs of SGD (lr 0.02, momentum 0.9, batch 20).
# aggregator "mean": the grid measures the algorithms and partitions, and its published cells were
# measured with the plain mean; the default defence (norm_bound) is the robustness benchmark's subject.
GRID_COORDINATOR = CoordinatorConfig(clients_per_round=10, aggregator="mean",
                                     hyper=TaskHyper(epochs=5, batch_size=20, lr=0.02, momentum=0.9))


@dataclass(frozen=True)
class HeteroGrid:
    """Everything the benchmark varies, and the fixed training settings."""

    datasets: tuple[str, ...] = ("mnist5k",)  # shipped names; a --data DIR adds its path
    data_standardize: bool | None = None  # the --data DIR's features (SimConfig.standardize); None = auto
    partitions: tuple[str, ...] = tuple(PARTITIONS)
    algorithms: tuple[str, ...] = tuple(ALGORITHMS)
    personalization: tuple[bool, ...] = (False, True)
    devices: int = 50
    rounds: int = 50
    seed: int = 0
    coordinator: CoordinatorConfig = GRID_COORDINATOR  # every job's; cells change only the strategy
    local_epochs: int = 20  # local-only baseline
    central_epochs: int = 30  # centralized baseline
    target_fraction: float = 0.95  # rounds to reach this x centralized accuracy
    final_window: int = 3  # "final" accuracy: mean over the last rounds (they oscillate under skew)
    # The compression sweep and the personalization-mode runs (one algorithm, one partition).
    compression: tuple[str, ...] = tuple(COMPRESSION)
    compression_partition: str = "dirichlet-0.5"
    compression_models: tuple[str, ...] = tuple(COMPRESSION_MODELS)
    # Sparse updates converge more slowly; "final accuracy" is read nearer the plateau (at 50
    # rounds top-1% trailed dense by 2.5 points on the full model, at 100 by 2.3, at 200 by 1.2-3.2).
    compression_rounds: int = 100
    modes: tuple[str, ...] = MODES
    modes_partition: str = "dirichlet-0.1"
    new_devices: int = 5  # held out in the mode runs
    finetune_steps: int = 20
    workers: int = 2
    # Pretrained-backbone rows (issue 11), beside the random-backbone ones: `fedge pretrain` on a
    # stratified proxy_fraction of mnist5k that no device gets, then these partitions x every
    # algorithm x personalization on/off, their baselines (from the same pretrained start) and
    # these compression settings on the adapters model (error feedback on), all on the rest of
    # the data. Empty: none. Only for mnist5k (the pretrained spec is MNIST's MLP).
    pretrained_partitions: tuple[str, ...] = ("iid", "shards-2", "dirichlet-0.1")
    pretrained_compression: tuple[str, ...] = ("dense-fp32", "int8-top10%", "int4-top1%")
    proxy_fraction: float = 0.1

    def __post_init__(self) -> None:
        unknown = [p for p in (*self.partitions, *self.pretrained_partitions, self.compression_partition,
                               self.modes_partition) if p not in PARTITIONS]
        unknown += [c for c in self.pretrained_compression if c not in COMPRESSION]
        unknown += [a for a in self.algorithms if a not in ALGORITHMS]
        unknown += [c for c in self.compression if c not in COMPRESSION]
        unknown += [m for m in self.modes if m not in MODES]
        unknown += [m for m in self.compression_models if m not in COMPRESSION_MODELS]
        if unknown:
            raise ValueError(f"unknown grid entries {unknown}")
        if self.rounds < 1 or self.compression_rounds < 1 or self.devices < 2 or self.workers < 1:
            raise ValueError("need rounds >= 1, compression_rounds >= 1, devices >= 2, workers >= 1")
        # SimConfig refuses these too, but only in a job: after the report folder was claimed
        if max(self.rounds, self.compression_rounds, self.devices) > MAX_COUNT or self.seed < 0:
            raise ValueError(f"need rounds, compression_rounds and devices at most {MAX_COUNT:,}, seed >= 0")


QUICK = HeteroGrid(partitions=("iid", "dirichlet-0.1", "shards-2"), algorithms=("fedavg", "fedyogi", "scaffold"),
                   devices=20, coordinator=with_options(GRID_COORDINATOR, clients_per_round=5, epochs=2), rounds=15,
                   local_epochs=10, central_epochs=10,
                   compression=("dense-fp32", "int8-top1%"), compression_partition="dirichlet-0.1",
                   compression_models=("adapters",), compression_rounds=15,
                   modes=("adapters", "full"), new_devices=2, finetune_steps=10,
                   pretrained_partitions=("iid", "dirichlet-0.1"), pretrained_compression=("dense-fp32",))
PRETRAINED = "pretrained"  # the `backbone` label of the pretrained rows; the others are "random"


@dataclass(frozen=True)
class Job:
    kind: str  # cell | baselines | compression | mode
    cfg: SimConfig
    labels: dict = field(default_factory=dict)  # what the JSON row is keyed by (dataset, partition, ...)


def _base_cfg(grid: HeteroGrid, dataset: str, partition: str) -> SimConfig:
    source = {"dataset": dataset} if partition != GIVEN else {"data_dir": dataset, "standardize": grid.data_standardize}
    return SimConfig(devices=grid.devices, rounds=grid.rounds, seed=grid.seed, coordinator=grid.coordinator,
                     local_epochs=grid.local_epochs, central_epochs=grid.central_epochs,
                     finetune_steps=grid.finetune_steps,
                     **source, **PARTITIONS.get(partition, {}))


def dataset_label(dataset: str, partition: str) -> str:
    return Path(dataset).name if partition == GIVEN else dataset


def build_jobs(grid: HeteroGrid, data_dir: str | None = None, pretrained_model: str | None = None) -> list[Job]:
    """Every job of the grid, the longest first (a pool then ends evenly): the compression
    sweep (compression_rounds), the personalization modes, the cells, the baselines.
    pretrained_model: the spec `fedge pretrain` wrote (grid.proxy_fraction of the first dataset,
    grid.seed): adds the pretrained rows (HeteroGrid.pretrained_partitions), labelled backbone
    "pretrained"; every other job is backbone "random"."""
    jobs = _random_jobs(grid, data_dir)
    if pretrained_model is None or not grid.datasets:
        return jobs
    first = grid.datasets[0]
    pre = {"model": pretrained_model, "proxy_fraction": grid.proxy_fraction}
    label = {"dataset": first, "backbone": PRETRAINED}
    compression = []
    for setting in grid.pretrained_compression:
        bits, topk = COMPRESSION[setting]
        cfg = sim_config(replace(_base_cfg(grid, first, grid.compression_partition), **pre), personalization="none",
                         rounds=grid.compression_rounds, quant_bits=bits, topk_fraction=topk, error_feedback=True)
        compression.append(Job("compression", cfg, {**label, "partition": grid.compression_partition,
                                                    "algorithm": "fedavg", "compression_model": "adapters",
                                                    "setting": setting, "error_feedback": True}))
    cells, baselines = [], []
    for partition in grid.pretrained_partitions:
        base = replace(_base_cfg(grid, first, partition), **pre)
        for algorithm in grid.algorithms:
            for personal in grid.personalization:
                cfg = sim_config(base, personalization="adapters" if personal else "none", strategy=algorithm,
                                 **ALGORITHMS[algorithm])
                cells.append(Job("cell", cfg, {**label, "partition": partition, "algorithm": algorithm,
                                              "personalization": personal}))
        baselines.append(Job("baselines", base, {**label, "partition": partition}))
    # The longest first by kind; within a kind, the random rows before the pretrained ones.
    return sorted(jobs + compression + cells + baselines, key=lambda job: _KIND_ORDER.index(job.kind))


_KIND_ORDER = ("compression", "mode", "cell", "baselines")  # the longest kind of job first


def _random_jobs(grid: HeteroGrid, data_dir: str | None) -> list[Job]:
    sources = [(d, p) for d in grid.datasets for p in grid.partitions] + ([(data_dir, GIVEN)] if data_dir else [])
    jobs: list[Job] = []
    first = grid.datasets[0] if grid.datasets else None
    if first is not None:
        for model in grid.compression_models:
            mode, steps = COMPRESSION_MODELS[model]
            for setting in grid.compression:
                bits, topk = COMPRESSION[setting]
                for feedback in (True, False):
                    cfg = sim_config(_base_cfg(grid, first, grid.compression_partition), personalization=mode,
                                     finetune_steps=steps, rounds=grid.compression_rounds, quant_bits=bits,
                                     topk_fraction=topk, error_feedback=feedback)
                    labels = {"dataset": first, "partition": grid.compression_partition, "algorithm": "fedavg",
                              "compression_model": model, "setting": setting, "error_feedback": feedback}
                    jobs.append(Job("compression", cfg, labels))
    if first is not None:
        for mode in grid.modes:
            cfg = replace(_base_cfg(grid, first, grid.modes_partition), personalization=mode,
                          new_devices=grid.new_devices)
            jobs.append(Job("mode", cfg, {"dataset": first, "partition": grid.modes_partition, "algorithm": "fedavg",
                                         "mode": mode}))
    for dataset, partition in sources:
        label = {"dataset": dataset_label(dataset, partition), "partition": partition}
        for algorithm in grid.algorithms:
            for personal in grid.personalization:
                cfg = sim_config(_base_cfg(grid, dataset, partition),
                                 personalization="adapters" if personal else "none",
                                 strategy=algorithm, **ALGORITHMS[algorithm])
                jobs.append(Job("cell", cfg, {**label, "algorithm": algorithm, "personalization": personal}))
    for dataset, partition in sources:
        jobs.append(Job("baselines", _base_cfg(grid, dataset, partition),
                        {"dataset": dataset_label(dataset, partition), "partition": partition}))
    return jobs


@functools.lru_cache(maxsize=2)
def _data(source: tuple) -> FederatedDataset:
    """A worker's last datasets (building MNIST-5k's split takes about a second)."""
    return load_data(SimConfig(**dict(source)))


def _data_for(cfg: SimConfig) -> FederatedDataset:
    keys = ("dataset", "data_dir", "standardize", "partition", "alpha", "classes_per_client", "devices", "seed",
            "test_fraction", "proxy_fraction")
    return _data(tuple((k, getattr(cfg, k)) for k in keys))


def run_job(job: Job) -> dict:
    """Run one job in a temporary directory; returns its labels plus what it measured."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedge-hetero-") as tmp:
        cfg = replace(job.cfg, out_dir=tmp)
        data = _data_for(cfg)
        out = _baselines(cfg, data) if job.kind == "baselines" else _simulate(cfg, data)
    return {"kind": job.kind, **job.labels, **out, "wall_seconds": round(time.perf_counter() - started, 3)}


def _simulate(cfg: SimConfig, data: FederatedDataset) -> dict:
    result = run_simulation(cfg, data=data)
    rows = result.rounds
    return {
        "model": result.model,
        "rounds": len(rows),
        "global_accuracy_curve": [r["global_accuracy"] for r in rows],
        "personalized_accuracy_curve": [r["personalized_accuracy_mean"] for r in rows],
        "personalized_accuracy_min_curve": [r["personalized_accuracy_min"] for r in rows],
        "personalized_accuracy_p10_curve": [r.get("personalized_accuracy_p10") for r in rows],
        "bytes_up_curve": [r["bytes_up"] for r in rows],
        "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in rows])),
        "bytes_up_dense_per_round": float(np.mean([r["bytes_up_dense"] for r in rows])),
        "reports_per_round": float(np.mean([r["participants"] for r in rows])),
        "new_devices": result.new_devices or None,
        "devices": [c.client_id for c in data.clients[:len(data.clients) - cfg.new_devices]],  # those that trained
        "rejections": result.summary.get("rejections", {}),
        "declines": result.summary.get("declines", {}),
    }


def _baselines(cfg: SimConfig, data: FederatedDataset) -> dict:
    """Local-only with the adapters spec (its private head scored), central with the global spec."""
    out = {}
    for mode, key in (("adapters", "local_only"), ("none", "central")):
        setup = prepare(replace(cfg, personalization=mode), data)
        try:
            if key == "local_only":
                out[key] = baseline_runs.local_only(setup.model, setup.data, setup.hyper, cfg.local_epochs,
                                                    setup.backend, cfg.seed)
            else:
                out[key] = baseline_runs.central(setup.model, setup.data, setup.hyper, cfg.central_epochs,
                                                 setup.backend, cfg.seed)
        finally:
            setup.close()
    return out
