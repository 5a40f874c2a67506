"""The shipped sign split against the research probe's rule, on the bench cell run here (seed 0,
sign_flip, `--defenses sign_split`, 100 rounds, 50 devices, Dirichlet 0.1, 20% attackers).

    mode A  the shipped gated_keep decides; on the same rows, each round, the probe's
            signguard_keep(gap=4) runs on a twin of the round's RNG, and every round where the
            two differ is printed with the updates the probe's norm band [0.1, 3] x median left out
    mode B  the probe's signguard_keep(gap=4) decides, through the shipped aggregator (its clip,
            cap and exclusion, the round's RNG): the probe's own cell should come back bit for bit

Run from the repository root (one worker, so the patch reaches the cell):

    .venv-test/bin/python benchmarks/results/2026-12-06-sign-split/compare_probe.py A compare-A.json
"""

import copy
import importlib.util
import sys

import numpy as np

import fedge.coordinator.robust.screened as screened
from fedge.coordinator.robust.sign_split import gated_keep
from fedge.tools.bench.robustness import main

spec = importlib.util.spec_from_file_location("probe", "benchmarks/results/2026-12-06-robust-research/probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
rounds = {"rounds": 0, "differ": 0, "band": 0, "half": 0}


def shadow(rows, rng, gap, share, min_inputs):
    twin = copy.deepcopy(rng)
    mine = gated_keep(rows, rng, gap, share, min_inputs)
    theirs = probe.signguard_keep(rows, twin, gap=gap)
    rounds["rounds"] += 1
    if not np.array_equal(mine, theirs):
        rounds["differ"] += 1
        norms = np.linalg.norm(rows, axis=1)
        band = (norms >= 0.1 * np.median(norms)) & (norms <= 3 * np.median(norms))
        why = "band" if not band.all() else "half" if 2 * (~theirs).sum() >= len(rows) else "other"
        rounds[why] = rounds.get(why, 0) + 1
        print(f"round {rounds['rounds']}: shipped leaves out {np.flatnonzero(~mine).tolist()}, probe "
              f"{np.flatnonzero(~theirs).tolist()}, probe's norm band {np.flatnonzero(~band).tolist()}", flush=True)
    return mine


def probe_rule(rows, rng, gap, share, min_inputs):
    return probe.signguard_keep(rows, rng, gap=gap)


if __name__ == "__main__":
    screened.gated_keep = shadow if sys.argv[1] == "A" else probe_rule
    main(["--json", sys.argv[2], "--defenses", "sign_split", "--attacks", "sign_flip", "--partitions", "dirichlet",
          "--fractions", "0.2", "--rounds", "100", "--seed", "0", "--workers", "1"])
    if sys.argv[1] == "A":
        print(rounds)
