"""SCAFFOLD as the paper writes it (Karimireddy et al. 2020, Algorithm 1, option II), in a plain
numpy loop on the very cell repro.py runs (same pretrained model, data split, hyperparameters),
with no fedge device, coordinator, compression, clipping or divergence guard:

    local:  y <- y - lr * buf,  buf <- beta * buf + (g(y) + c - c_i)    (beta = 0: the paper's SGD)
    c_i+  = c_i - c + (x - y_i) / (S lr)      S = K for beta = 0 (local_training.momentum_steps)
    x    <- x + mean_{i in S} (y_i - x)       unweighted, as in the paper (WEIGHTING "equal"), or
                                              weighted by examples n_i as fedge's default ("examples")
    c    <- c + (|S| / N) mean_{i in S} (c_i+ - c_i)

    python paper_loop.py SEED ROUNDS MOMENTUM OUT.json [WEIGHTING]
"""

import json
import sys
import tempfile

import numpy as np

from fedge.edge_runtime.local_training import momentum_steps
from fedge.edge_runtime.trainer.base import global_norm
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from fedge.tools.bench.hetero_grid import GRID_COORDINATOR, PARTITIONS
from fedge.tools.pretrain import PretrainConfig, pretrain
from fedge.tools.simulate.config import SimConfig, sim_config
from fedge.tools.simulate.fleet import prepare

seed, rounds, beta, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
weighting = sys.argv[5] if len(sys.argv) > 5 else "equal"
hyper = GRID_COORDINATOR.hyper
lr, epochs, batch, per_round = hyper.lr, hyper.epochs, hyper.batch_size, GRID_COORDINATOR.clients_per_round

with tempfile.TemporaryDirectory() as tmp:
    pre = pretrain(PretrainConfig(out=tmp + "/pre", dataset="mnist5k", proxy_fraction=0.1, devices=50, seed=seed))
    cfg = sim_config(SimConfig(devices=50, rounds=rounds, seed=seed, coordinator=GRID_COORDINATOR, out_dir=tmp,
                               model=str(pre.spec_file), proxy_fraction=0.1, **PARTITIONS["dirichlet-0.1"]),
                     personalization="none", strategy="scaffold")
    setup = prepare(cfg)
    try:
        net = NumpyModel(setup.manifest.spec, load_frozen(setup.art_dir, setup.manifest), np.float64)
        x = {k: v.astype(np.float64) for k, v in setup.model.initial("shared").items()}
        clients = [(setup.model.embed(c.x_train), c.y_train) for c in setup.data.clients]
        xt, yt = setup.data.union_test()
        zt = setup.model.embed(xt)
    finally:
        setup.close()

n = len(clients)
c = {k: np.zeros_like(v) for k, v in x.items()}
ci = [{k: np.zeros_like(v) for k, v in x.items()} for _ in range(n)]
rng = np.random.default_rng([seed, 7])
rows = []
for r in range(rounds):
    chosen = rng.choice(n, per_round, replace=False)
    dys, dcs, pushes, worst = [], [], [], 0.0
    weights = np.array([len(clients[i][1]) if weighting == "examples" else 1.0 for i in chosen], np.float64)
    for i in chosen:
        z, y = clients[i]
        w = {k: v.copy() for k, v in x.items()}
        buf = {k: np.zeros_like(v) for k, v in x.items()}
        corr = {k: c[k] - ci[i][k] for k in x}
        steps, first = 0, None
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for b in range(-(-len(y) // batch)):
                idx = order[b * batch:(b + 1) * batch]
                loss, g = net.loss_and_grads(w, z[idx], y[idx])
                first = loss if first is None else first
                worst = max(worst, loss / max(first, 1.0))
                for k in w:
                    buf[k] = beta * buf[k] + g[k] + corr[k]
                    w[k] = w[k] - lr * buf[k]
                steps += 1
        dy = {k: w[k] - x[k] for k in x}
        pushes.append({k: -lr * momentum_steps(steps, beta) * corr[k] for k in x})  # what c - c_i moved y_i
        new_ci = {k: ci[i][k] - c[k] - dy[k] / (momentum_steps(steps, beta) * lr) for k in x}
        dcs.append({k: new_ci[k] - ci[i][k] for k in x})
        ci[i] = new_ci
        dys.append(dy)
    share = weights / weights.sum()
    push = {k: np.tensordot(share, np.array([p[k] for p in pushes]), axes=1) for k in x}
    for k in x:
        x[k] = x[k] + np.tensordot(share, np.array([d[k] for d in dys]), axes=1)
        c[k] = c[k] + per_round / n * np.mean([d[k] for d in dcs], axis=0)
    acc = float(np.mean(np.argmax(net.forward(x, zt)[2]["global"], axis=1) == yt))
    mean_c = {k: np.mean([cc[k] for cc in ci], axis=0) for k in x}
    # The same over the whole population, each device's correction as it would move y_j now:
    # what the server step adds on average over the draws (0 needs equal weights and equal K).
    every = np.array([len(yy) if weighting == "examples" else 1.0 for _, yy in clients], np.float64)
    reach = np.array([lr * momentum_steps(epochs * -(-len(yy) // batch), beta) for _, yy in clients])
    expected = {k: sum(every[j] * reach[j] * (c[k] - ci[j][k]) for j in range(n)) / every.sum() for k in x}
    row = {"round": r + 1, "global_accuracy": round(acc, 4), "c_norm": round(global_norm(c), 3),
           "c_minus_mean_ci": float(f"{global_norm({k: c[k] - mean_c[k] for k in x}):.3g}"),
           "max_ci_norm": round(max(global_norm(cc) for cc in ci), 3),
           "mean_dy_norm": round(global_norm({k: np.mean([d[k] for d in dys], axis=0) for k in x}), 4),
           # the corrections' share of the server step: cancels only when the weights are those of c
           "correction_push_norm": round(global_norm(push), 4),
           "expected_push_norm": round(global_norm(expected), 4), "max_loss_over_first": round(worst, 2)}
    rows.append(row)
    print(json.dumps(row), flush=True)
doc = {"command": "python benchmarks/results/2026-12-06-scaffold-pretrained/paper_loop.py " + " ".join(sys.argv[1:]),
       "seed": seed, "momentum": beta, "weighting": weighting,
       "final_global_accuracy": float(np.mean([r["global_accuracy"] for r in rows[-3:]])), "rounds_log": rows}
with open(out, "w") as f:
    json.dump(doc, f, indent=1)
print(json.dumps({k: v for k, v in doc.items() if k != "rounds_log"}))
