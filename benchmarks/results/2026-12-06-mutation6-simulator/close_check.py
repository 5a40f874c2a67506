"""`python close_check.py 0 1 2`: how often the sync round of `fedge bench async` closed after
its deadline: the driver's timing on the real virtual fleet (1,000 devices, the default
FleetModel and RunConfig, the measured frame sizes) with a stub task (a zero delta; timing does
not depend on the model)."""
import sys

import numpy as np

from fedge.tools.bench.async_runs import RunConfig, run_sync
from fedge.tools.bench.virtual_fleet import FleetModel, VirtualFleet
from fedge.tools.datasets import build_federated


class Stub:
    init = {"w": np.zeros(1, np.float32)}
    bytes_down, bytes_up = 204_235, 51_296

    def __init__(self, clients):
        self.clients = clients

    def accuracy(self, params):
        return 0.0

    def train(self, params, device, cfg, salt):
        return {"w": np.zeros(1, np.float32)}


for seed in map(int, sys.argv[1:]):
    cfg = RunConfig(seed=seed)
    data = build_federated("mnist5k", 1000, "dirichlet", seed, alpha=0.3)
    fleet = VirtualFleet(np.array([len(c.y_train) for c in data.clients]), FleetModel(),
                         np.random.default_rng([seed, 7]))
    out = run_sync(Stub(data.clients), fleet, cfg)
    lengths = np.diff([t for t, _, _ in out["curve"]])
    late = int(np.sum(lengths > out["deadline_seconds"] + 1e-9))
    print(f"seed {seed}: deadline {out['deadline_seconds']:.1f} s, rounds closed after it: {late} of {cfg.rounds}, "
          f"longest round {lengths.max():.1f} s, end {out['curve'][-1][0]:.0f} s")
