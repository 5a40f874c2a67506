"""Reproduce one heterogeneity cell (pretrained backbone, Dirichlet 0.1, SCAFFOLD) with the
grid's exact settings (tools/bench/hetero_grid.py), and print per round the norms of the server
control c, the mean Δc_i, the mean Δy_i, the devices' corrections c - c_i, how often a local step
was clipped (max_grad_norm), and the diverged declines.

    python repro.py SEED ROUNDS DEVICES PERSONALIZATION OUT.json [option=value ...]
    # e.g. python repro.py 1 50 50 none /tmp/s1.json           (the collapsing cell)
    #      python repro.py 1 30 50 none /tmp/s1m0.json momentum=0.0
    #      python repro.py 1 50 50 adapters /tmp/r.json backbone=random partition=shards-2 scaffold_weights=examples

Options are coordinator/hyper/compression fields (tools/simulate/config.with_options), plus
backbone=random, partition=LABEL and scaffold_weights=examples (the round's deltas weighted by
examples again, as before the 2026-12-06 fix; bit-identical to a run at dce2b1f).
"""

import json
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

from fedge.coordinator.strategies import scaffold
from fedge.edge_runtime import device, local_training
from fedge.edge_runtime.trainer import base, numpy_ref, portable
from fedge.tools.bench.hetero_grid import ALGORITHMS, GRID_COORDINATOR, PARTITIONS
from fedge.tools.pretrain import PretrainConfig, pretrain
from fedge.tools.simulate.config import SimConfig, sim_config
from fedge.tools.simulate.fleet import run_simulation

seed, rounds, devices, personalization, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                              sys.argv[5])


def value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


options = {k: value(v) for k, v in (item.split("=", 1) for item in sys.argv[6:])}
# Not coordinator options: backbone=random (no pretrained model), partition=LABEL (hetero_grid's),
# scaffold_weights=examples (the deltas weighted by examples, as before 2026-12-06).
backbone = options.pop("backbone", "pretrained")
partition = options.pop("partition", "dirichlet-0.1")
if options.pop("scaffold_weights", "equal") == "examples":
    from fedge.coordinator import server

    orig_open = server.open_round

    def open_round(*args, **kw):
        rnd = orig_open(*args, **kw)
        rnd.ctx = replace(rnd.ctx, equal_weights=kw["config"].weighting == "equal")
        return rnd

    server.open_round = open_round


def norm(params) -> float:
    return base.global_norm(params) if params else 0.0


log = {"apply": [], "control_delta": [], "corrections": [], "tasks": [], "clips": 0, "steps": 0}
orig_apply = scaffold.Scaffold.apply


def apply(self, state, agg):
    new = orig_apply(self, state, agg)
    log["apply"].append({"c_before": norm(state.extra["control"]), "c_after": norm(new.extra["control"]),
                         "mean_dc": norm(agg.mean_control), "mean_dy": norm(agg.mean_delta),
                         "participants": agg.participants, "population": agg.population})
    return new


scaffold.Scaffold.apply = apply
orig_delta = local_training.scaffold_control_delta


def control_delta(server_control, shared_delta, steps, hyper):
    dc = orig_delta(server_control, shared_delta, steps, hyper)
    log["control_delta"].append({"dc": norm(dc), "dy": norm(shared_delta), "steps": steps})
    return dc


device.scaffold_control_delta = control_delta
orig_train = device.train_locally


def train(*args, correction=None, **kw):
    log["corrections"].append(norm(correction))
    task = {"n": len(args[6]), "correction": round(norm(correction), 3)}
    log["tasks"].append(task)
    result = orig_train(*args, correction=correction, **kw)  # raises Diverged: the task stays without "dy"
    task.update(steps=result.steps, dy=round(norm(result.shared_delta), 4),
                epoch_loss=[round(x, 3) for x in result.epoch_losses])
    return result


device.train_locally = train
orig_clip = base.clip_step


def clip(before, after, max_norm):
    out = orig_clip(before, after, max_norm)
    log["steps"] += 1
    log["clips"] += out is not None
    return out


portable.clip_step = numpy_ref.clip_step = clip

with tempfile.TemporaryDirectory() as tmp:
    started = time.perf_counter()
    pre = (pretrain(PretrainConfig(out=tmp + "/pre", dataset="mnist5k", proxy_fraction=0.1, devices=devices,
                                   seed=seed)) if backbone == "pretrained" else None)
    from_pre = {"model": str(pre.spec_file), "proxy_fraction": 0.1} if pre else {}
    base_cfg = SimConfig(devices=devices, rounds=rounds, seed=seed, coordinator=GRID_COORDINATOR, out_dir=tmp + "/run",
                         **from_pre, **PARTITIONS[partition])
    cfg = sim_config(base_cfg, personalization=personalization, strategy="scaffold", **ALGORITHMS["scaffold"],
                     **options)
    rows = []
    declined = [0]

    def on_round(row):
        a = log["apply"][-1] if log["apply"] else {}
        cd = log["control_delta"][-cfg.coordinator.clients_per_round:]
        cor = log["corrections"][-cfg.coordinator.clients_per_round:]
        r = {"round": len(rows) + 1, "global_accuracy": round(row["global_accuracy"], 4),
             "c_norm": round(a.get("c_after", 0.0), 3), "mean_dc_norm": round(a.get("mean_dc", 0.0), 3),
             "mean_dy_norm": round(a.get("mean_dy", 0.0), 4),
             "max_dc_i_norm": round(max((x["dc"] for x in cd), default=0.0), 3),
             "max_dy_i_norm": round(max((x["dy"] for x in cd), default=0.0), 4),
             "max_correction_norm": round(max(cor, default=0.0), 3),
             "clipped_steps": log["clips"], "steps": log["steps"], "participants": row.get("participants")}
        log["clips"] = log["steps"] = 0
        print(json.dumps(r), flush=True)
        r["tasks"], log["tasks"] = log["tasks"], []
        rows.append(r)

    result = run_simulation(cfg, on_round=on_round)
    doc = {"command": "python benchmarks/results/2026-12-06-scaffold-pretrained/repro.py " + " ".join(sys.argv[1:]),
           "seed": seed, "rounds": rounds, "devices": devices, "personalization": personalization, "options": options,
           "pretrained_accuracy": pre.accuracy if pre else None, "declines": result.summary["declines"],
           "final_global_accuracy": float(np.mean([r["global_accuracy"] for r in rows[-3:]])),
           "wall_seconds": round(time.perf_counter() - started, 1), "rounds_log": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(json.dumps({k: v for k, v in doc.items() if k != "rounds_log"}))
