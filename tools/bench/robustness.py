"""`fedge bench robustness`: attacks x defences x partitions x attacker shares, each a full
simulated run (real device code, real coordinator, real onnxruntime) with the attackers a
fixed share of the population. Writes one JSON document, and beside it a Markdown report and a
PNG of heat maps (robustness_report.py; `--render out.json` writes them again from a JSON).

    fedge bench robustness --json out.json [--quick] [--workers 2] [--rounds N] [--seed S]

Output JSON (schema 1):
    schema, benchmark ("robustness"), quick, grid (the RobustGrid), wall_seconds
    cells: list, one per (attack, defense, partition, attackers_fraction):
        attack             str: tools/simulate/attacks.py's name, "none" for the clean reference
        defense            str: the coordinator's aggregator (coordinator/robust/aggregators.py),
                           "+bucketing" = behind buckets of grid.bucket_size, or a PRESETS name
                           (sign_split: norm_bound with [robust.sign] gap = 4)
        default            bool: defense is the default defence (norm_bound)
        partition          str
        attackers_fraction float: share of the population that attacks (0 for "none")
        omniscient         bool: colluders also saw honest devices' deltas
        guard_fraction     fraction: share of the dataset held by no device, the coordinator's guard
                           set (0 = none; with one, norm_bound screens each round: robust/screening.py)
        final_accuracy     fraction: global model on the union of held-out splits, mean of the
                           last grid.final_window rounds
        tail_accuracy      fraction or null: the same model, mean of the last max(3, ceil(rounds / 5))
                           rounds of accuracy_curve (20 of 100), rounds with no evaluation skipped
                           (null when none is left): steadier than final_accuracy where the curve
                           has not settled (robustness_report.py); absent in JSONs before 2026-12-06
        tail_rounds        int: how many rounds tail_accuracy averages
        backdoor_success   fraction or null: share of non-target test inputs, trigger stamped,
                           the final global model calls the target class (backdoor attack only)
        accuracy_curve     per round; rejections, declines: {reason: count}; wall_seconds
        screened           {honest, attackers, reports}: updates the guard set left out of the
                           aggregates (robust/screening.py), and the updates the rounds accepted
        excluded           the same for the updates the norm bound left out, each over its
                           exclusion bound (robust/norm_bound.py)
        sign_split         the same for the updates the sign split left out (robust/sign_split.py)
    errors: cells that failed, with the error
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.robust.errors import BadRobustParameter
from fedge.coordinator.robust.sign_split import SignSplitConfig
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.beside_json import check_beside
from fedge.tools.cli_args import MAX_PARALLEL, MAX_SEED, int_in, out_file_arg
from fedge.tools.simulate.adversary import AttackSpec
from fedge.tools.simulate.errors import AttackError

from .robustness_report import check_cells, markdown, tail

# The cells marked `default`: the aggregator a coordinator runs when its config names none.
DEFAULT_DEFENSE = CoordinatorConfig().aggregator
# Defences that are an aggregator with [robust] settings: name -> (aggregator, RobustConfig fields).
# sign_split: the gated sign split behind the default's clip, at the gap the research probe ran
# (benchmarks/results/2026-12-06-robust-research/, nb_signguard_gap4_nc).
PRESETS = {"sign_split": ("norm_bound", {"sign": SignSplitConfig(gap=4.0)})}


@dataclass(frozen=True)
class RobustGrid:
    attacks: tuple[str, ...] = ("none", "sign_flip", "scale", "gaussian", "label_flip", "backdoor", "alie", "ipm",
                                "min_max", "min_sum", "huge_weight", "nan", "poison")
    defenses: tuple[str, ...] = ("mean", "norm_bound", "median", "trimmed_mean", "krum", "centered_clipping",
                                 "median+bucketing", "krum+bucketing")
    bucket_size: int = 2
    partitions: tuple[str, ...] = ("iid", "dirichlet")
    fractions: tuple[float, ...] = (0.1, 0.2)
    omniscient: bool = False
    dataset: str = "mnist5k"
    devices: int = 50
    clients_per_round: int = 10
    rounds: int = 20
    # The float grid sends fp32 dense updates; --compressed sends int8 top-10% (with error feedback).
    quant_bits: int = 32
    topk_fraction: float = 1.0
    final_window: int = 3
    guard_fraction: float = 0.0  # the coordinator's guard set (SimConfig.guard_fraction); 0 = none
    exclude_multiplier: float | None = None  # [robust.norm] exclude_multiplier; None = the coordinator's default (4)
    exclude_claim_allowance: float | None = None  # [robust.norm] exclude_claim_allowance; None = the default (1)
    device_clip: bool | None = None  # [robust.norm] device_clip; None = the default (on)
    attack_scale: float = 0.0  # AttackSpec.scale (sign_flip's factor, scale/backdoor's boost); 0 = the attack's own
    seed: int = 0
    workers: int = 2


QUICK = RobustGrid(attacks=("none", "sign_flip", "backdoor", "alie", "ipm"),
                   defenses=("mean", "norm_bound", "median", "krum", "centered_clipping", "median+bucketing"),
                   partitions=("dirichlet",), fractions=(0.3,), dataset="digits", devices=10,
                   clients_per_round=5, rounds=8)


@dataclass(frozen=True)
class Cell:
    attack: str
    defense: str
    partition: str
    fraction: float


def build_cells(grid: RobustGrid) -> list[Cell]:
    """Every attack x defence x partition x share; "none" once per defence and partition."""
    cells = []
    for partition in grid.partitions:
        for defense in grid.defenses:
            for attack in grid.attacks:
                for fraction in ((0.0,) if attack == "none" else grid.fractions):
                    cells.append(Cell(attack, defense, partition, fraction))
    return cells


def cell_config(grid: RobustGrid, cell: Cell, out: str):
    """The cell's SimConfig (it validates itself: _check builds every cell's before any runs)."""
    from fedge.tools.simulate.config import sim_config

    aggregator, robust = PRESETS.get(cell.defense, (cell.defense.split("+")[0], {}))
    return sim_config(dataset=grid.dataset, devices=grid.devices, clients_per_round=grid.clients_per_round,
                      rounds=grid.rounds, seed=grid.seed, partition=cell.partition, out_dir=out,
                      attack=None if cell.attack == "none" else cell.attack, attackers=cell.fraction or 0.2,
                      omniscient=grid.omniscient, attack_scale=grid.attack_scale,
                      aggregator=aggregator, guard_fraction=grid.guard_fraction, **_norm(grid), **robust,
                      quant_bits=grid.quant_bits, topk_fraction=grid.topk_fraction,
                      bucket_size=grid.bucket_size if cell.defense.endswith("+bucketing") else 0)


def run_cell(grid: RobustGrid, cell: Cell) -> dict:
    from fedge.tools.simulate.fleet import run_simulation

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedge-robust-") as out:
        result = run_simulation(cell_config(grid, cell, out))
    curve = [r["global_accuracy"] for r in result.rounds]
    last = result.rounds[-grid.final_window:]
    backdoor = [r["backdoor_success"] for r in last if r.get("backdoor_success") is not None]
    tail_accuracy, tail_rounds = tail(curve, grid.rounds)
    return {
        "attack": cell.attack, "defense": cell.defense, "default": cell.defense == DEFAULT_DEFENSE,
        "partition": cell.partition, "attackers_fraction": cell.fraction, "omniscient": grid.omniscient,
        "guard_fraction": grid.guard_fraction, "final_accuracy": float(np.mean(curve[-grid.final_window:])),
        "tail_accuracy": tail_accuracy, "tail_rounds": tail_rounds,
        "backdoor_success": float(np.mean(backdoor)) if backdoor else None,
        "accuracy_curve": curve, "rejections": result.summary.get("rejections", {}),
        "declines": result.summary.get("declines", {}), "screened": result.summary.get("screened"),
        "excluded": result.summary.get("excluded"), "sign_split": result.summary.get("sign_split"),
        "wall_seconds": time.perf_counter() - started,
    }


def _norm(grid: RobustGrid) -> dict:
    """The norm bound's settings the grid changes: {} for the coordinator's own."""
    from fedge.coordinator.robust.norm_bound import NormBoundConfig

    changed = {k: v for k, v in (("exclude_multiplier", grid.exclude_multiplier),
                                 ("exclude_claim_allowance", grid.exclude_claim_allowance),
                                 ("device_clip", grid.device_clip)) if v is not None}
    return {"norm": NormBoundConfig(**changed)} if changed else {}


def _check(grid: RobustGrid) -> None:
    """Refuse settings every cell would fail on, before any cell runs (a cell's own failure is
    caught and reported in `errors`, which would hide a bad flag behind a zero exit)."""
    _norm(grid)  # NormBoundConfig validates itself
    AttackSpec("backdoor", scale=grid.attack_scale)
    from fedge.coordinator.config import AGGREGATORS  # with the robust rules registered
    from fedge.tools.simulate.adversary import ATTACKS

    unknown = [a for a in grid.attacks if a != "none" and a not in ATTACKS]
    unknown += [d for d in grid.defenses if d not in PRESETS and (d.split("+")[0] not in AGGREGATORS
                or d.count("+") > 1 or "+" in d and not d.endswith("+bucketing"))]
    unknown += [p for p in grid.partitions if p not in ("iid", "dirichlet", "shards", "quantity", "feature")]
    if unknown:
        raise AttackError(f"unknown {', '.join(map(repr, unknown))}: attacks are none or {', '.join(ATTACKS)}; "
                          f"defences an aggregator ({', '.join(sorted(AGGREGATORS))}), optionally +bucketing, "
                          f"or {', '.join(PRESETS)}")
    for cell in build_cells(grid):  # --rounds 0, --guard-fraction 2, --fractions nan: every cell failed
        cell_config(grid, cell, "unused")


def _recorded(grid: RobustGrid) -> dict:
    """The grid as the JSON states it: the exclusion settings the cells ran with, even when they
    were the coordinator's defaults (a later default must not change what an old JSON says)."""
    from fedge.coordinator.robust.norm_bound import NormBoundConfig

    out = asdict(grid)
    for name in ("exclude_multiplier", "exclude_claim_allowance", "device_clip"):
        if out[name] is None:
            out[name] = getattr(NormBoundConfig(), name)
    return out


def _safe(grid: RobustGrid, cell: Cell) -> dict:
    try:
        return run_cell(grid, cell)
    except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the grid; reported in errors
        return {"attack": cell.attack, "defense": cell.defense, "partition": cell.partition,
            "attackers_fraction": cell.fraction, "error": f"{type(exc).__name__}: {exc}"}


def run(grid: RobustGrid, json_path, quick: bool = False,
        log=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    started = time.perf_counter()
    check_beside(json_path, REPORT_SUFFIXES, "fedge bench robustness", None)  # before the grid, not after it
    cells = build_cells(grid)
    rows: list[dict | None] = [None] * len(cells)  # in grid order, whatever order they finish in
    done = 0
    if grid.workers <= 1:
        for i, cell in enumerate(cells):
            rows[i] = _safe(grid, cell)
            done += 1
            log(_progress(done, len(cells), rows[i]))
    else:
        with ProcessPoolExecutor(grid.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_safe, grid, cell): i for i, cell in enumerate(cells)}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                done += 1
                log(_progress(done, len(cells), rows[futures[future]]))
    doc = {"schema": 1, "benchmark": "robustness", "quick": quick, "grid": _recorded(grid),
           "wall_seconds": time.perf_counter() - started,
           "cells": [r for r in rows if "error" not in r],
           "errors": [r for r in rows if "error" in r]}
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    write_report(doc, path)
    return doc


REPORT_SUFFIXES = (".md", ".png")


def write_report(doc: dict, json_path: Path, report: str | None = None) -> None:
    """out.md (`report`, or the Markdown of `doc`) and out.png beside out.json (the PNG only with
    matplotlib installed)."""
    from .robustness_report import plot

    atomic_write_bytes(json_path.with_suffix(".md"), (markdown(doc) if report is None else report).encode())
    plot(doc, json_path.with_suffix(".png"))


def render(json_path: str) -> int:
    """--render: the report of a JSON this bench wrote, written beside it."""
    path = Path(json_path)
    try:
        doc = json.loads(path.read_text())
        if not (isinstance(doc, dict) and doc.get("benchmark") == "robustness"):
            raise ValueError("not a fedge bench robustness JSON")
        check_cells(doc)  # a curve that is not numbers: named here, not a traceback mid-report
        report = markdown(doc)  # a field the report reads, missing or of another type: named before any write
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fedge bench robustness --render {json_path}: {exc}") from None
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ConfigError(f"fedge bench robustness --render {json_path}: a field the report reads is missing or "
                          f"not what this bench writes ({type(exc).__name__}: {exc})") from None
    check_beside(path, REPORT_SUFFIXES, "fedge bench robustness", None)
    write_report(doc, path, report)
    print(f"wrote {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return 0


def _progress(i: int, n: int, row: dict) -> str:
    what = f"{row['attack']} vs {row['defense']} {row['partition']} {row['attackers_fraction']}"
    if "error" in row:
        return f"[{i}/{n}] {what}: error {row['error']}"
    bd = "" if row["backdoor_success"] is None else f" backdoor {row['backdoor_success']:.2f}"
    return f"[{i}/{n}] {what}: accuracy {row['final_accuracy']:.3f}{bd} ({row['wall_seconds']:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench robustness", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, default=None,
                   help="write the results here (and out.md, out.png beside)")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="write the Markdown and PNG of an existing results JSON, and run nothing")
    p.add_argument("--quick", action="store_true", help="a reduced grid on digits (30 cells of 8 rounds)")
    p.add_argument("--workers", type=int_in(1, MAX_PARALLEL), default=None, help="processes (default 2)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--devices", type=int, default=None, help="population (default 50)")
    p.add_argument("--clients-per-round", type=int, default=None, help="reports wanted per round (default 10)")
    p.add_argument("--compressed", action="store_true", help="int8, top-10%% updates instead of fp32 dense")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None)
    p.add_argument("--omniscient", action="store_true", help="colluders also see honest deltas")
    p.add_argument("--exclude-multiplier", type=float, default=None,
                   help="the norm bound leaves out updates over this many times the median norm "
                        "(default: the coordinator's, 4)")
    p.add_argument("--exclude-claim-allowance", type=float, default=None,
                   help="an update claiming c x the median claim may be min(max(c, 1), this) x further out "
                        "before it is left out (default: the coordinator's, 1 = none)")
    p.add_argument("--no-device-clip", dest="device_clip", action="store_false", default=None,
                   help="tasks do not ask devices to clip to the round's norm bound (default: they do)")
    p.add_argument("--attack-scale", type=float, default=None,
                   help="sign_flip's factor, scale's and backdoor's boost (default 0: the attack's own)")
    p.add_argument("--guard-fraction", type=float, default=None,
                   help="share of the data no device holds, given to the coordinator as its guard set (default 0)")
    p.add_argument("--attacks", default=None, help="comma list (default: the grid's)")
    p.add_argument("--defenses", default=None, help="comma list (default: the grid's): aggregators, "
                   "name+bucketing, or sign_split (norm_bound with [robust.sign] gap = 4)")
    p.add_argument("--partitions", default=None, help="comma list (default: the grid's)")
    p.add_argument("--fractions", default=None, help="comma list of attacker shares (default: the grid's)")
    args = p.parse_args(argv)
    if args.render:
        return render(args.render)
    if not args.json_path:
        p.error("--json is required (or --render JSON)")
    grid = QUICK if args.quick else RobustGrid()
    overrides = {k: v for k, v in (("workers", args.workers), ("rounds", args.rounds), ("seed", args.seed),
                                   ("devices", args.devices), ("clients_per_round", args.clients_per_round),
                                   ("guard_fraction", args.guard_fraction),
                                   ("exclude_multiplier", args.exclude_multiplier),
                                   ("exclude_claim_allowance", args.exclude_claim_allowance),
                                   ("device_clip", args.device_clip), ("attack_scale", args.attack_scale))
                 if v is not None}
    if args.compressed:
        overrides.update(quant_bits=8, topk_fraction=0.1)
    if args.omniscient:
        overrides["omniscient"] = True
    for name in ("attacks", "defenses", "partitions"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name).split(","))
    if args.fractions:
        try:
            overrides["fractions"] = tuple(float(f) for f in args.fractions.split(","))
        except ValueError:  # once a traceback
            p.error(f"--fractions {args.fractions!r}: a comma list of attacker shares, e.g. 0.1,0.3")
    grid = replace(grid, **overrides)
    try:
        _check(grid)
    except (BadRobustParameter, AttackError, ConfigError) as exc:
        p.error(str(exc))
    doc = run(grid, args.json_path, quick=args.quick)
    print(f"wrote {args.json_path}: {len(doc['cells'])} cells, {len(doc['errors'])} errors, "
          f"{doc['wall_seconds']:.0f} s")
    if doc["errors"]:
        return 1
    return 0
