"""Per-device mean cosine of each update with the sum of the other updates of its round (the
norm_bound aggregator's input, after the device clip), honest devices against attackers:
MNIST-5k, 50 devices, 10 per round, Dirichlet 0.1, 20% attackers. Writes
/tmp/rep/pd-<attack>-<seed>.json, which 2026-12-05-direction-per-device.json collects.

    python 2026-12-05-direction-per-device.py ATTACK SEED ROUNDS    # e.g. sign_flip 0 100
"""

import collections
import json
import sys
import tempfile

import numpy as np

from fedge.coordinator.robust import aggregators
from fedge.coordinator.robust.flat import flatten
from fedge.tools.simulate import adversary, malicious
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import run_simulation

attack, seed, n_rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
attackers = set()
original_delta = adversary.malicious_delta


def marked_delta(spec, collusion, n, eta, x, round_id, device_id, rng):
    attackers.add(device_id)
    return original_delta(spec, collusion, n, eta, x, round_id, device_id, rng)


adversary.malicious_delta = malicious.malicious_delta = marked_delta
rounds: list[list] = []
current = {"aggregator": None}
original_add = aggregators._Base.add


def recording_add(self, tensors, meta):
    if current["aggregator"] is not self:  # one aggregator per round
        current["aggregator"] = self
        rounds.append([])
    rounds[-1].append((getattr(meta, "device_id", None), np.asarray(flatten(tensors), np.float64).copy()))
    return original_add(self, tensors, meta)


aggregators._Base.add = recording_add
with tempfile.TemporaryDirectory() as out:
    cfg = sim_config(dataset="mnist5k", devices=50, clients_per_round=10, rounds=n_rounds, seed=seed,
                     partition="dirichlet", out_dir=out, attack=None if attack == "none" else attack,
                     attackers=0.2, aggregator="norm_bound")
    result = run_simulation(cfg)
attackers |= set(result.summary.get("attackers") or [])  # data-level attacks (label flip) send what they trained
final = float(np.mean([r["global_accuracy"] for r in result.rounds[-3:]]))
cosines = collections.defaultdict(list)
for updates in rounds:
    total = sum(v for _, v in updates)
    for device, v in updates:
        others = total - v
        denominator = np.linalg.norm(v) * np.linalg.norm(others)
        cosines[device].append(float(v @ others / denominator) if denominator > 0 else 0.0)
doc = {"attack": attack, "seed": seed, "final_accuracy": final}
for label, devices in (("honest", [d for d in cosines if d not in attackers]),
                       ("attacker", [d for d in cosines if d in attackers])):
    counts = [len(cosines[d]) for d in devices]
    doc[label] = {"devices": len(devices),
                  "mean_cosine_per_device": sorted(round(float(np.mean(cosines[d])), 3) for d in devices),
                  "participations_median": float(np.median(counts)) if counts else None}
    print(label, doc[label])
with open(f"/tmp/rep/pd-{attack}-{seed}.json", "w") as fh:
    json.dump(doc, fh, indent=1)
