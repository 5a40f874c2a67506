"""Per-device mean cosine (update vs the round's other updates) for sign-flip attackers vs honest."""
import sys, tempfile, collections
import numpy as np
from fedge.tools.simulate import adversary, malicious
from fedge.coordinator.robust import aggregators
from fedge.coordinator.robust.flat import flatten
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import run_simulation
attack = sys.argv[1]; seed = int(sys.argv[2])
attackers = set()
orig = adversary.malicious_delta
def md(spec, collusion, n, eta, x, round_id, device_id, rng):
    attackers.add(device_id); return orig(spec, collusion, n, eta, x, round_id, device_id, rng)
adversary.malicious_delta = md; malicious.malicious_delta = md
rounds = []; cur = {"obj": None}
oadd = aggregators._Base.add
def add(self, tensors, meta):
    if cur["obj"] is not self:
        cur["obj"] = self; rounds.append([])
    rounds[-1].append((getattr(meta, "device_id", None), np.asarray(flatten(tensors), np.float64).copy()))
    return oadd(self, tensors, meta)
aggregators._Base.add = add
with tempfile.TemporaryDirectory() as out:
    cfg = sim_config(dataset="mnist5k", devices=50, clients_per_round=10, rounds=int(sys.argv[3]), seed=seed,
                     partition="dirichlet", out_dir=out, attack=None if attack == "none" else attack, attackers=0.2,
                     aggregator="norm_bound")
    res = run_simulation(cfg)
attackers = set(res.summary.get("attackers") or []) | attackers
final = float(np.mean([r["global_accuracy"] for r in res.rounds[-3:]]))
print("final", final, "attackers", len(attackers))
cos = collections.defaultdict(list)
for vecs in rounds:
    tot = sum(v for _, v in vecs)
    for dev, v in vecs:
        o = tot - v; d = np.linalg.norm(v) * np.linalg.norm(o)
        cos[dev].append(float(v @ o / d) if d > 0 else 0.0)
import json
out = {"attack": attack, "seed": seed, "final_accuracy": final}
for label, devs in (("honest", [d for d in cos if d not in attackers]), ("attacker", [d for d in cos if d in attackers])):
    means = sorted(round(float(np.mean(cos[d])), 3) for d in devs)
    counts = [len(cos[d]) for d in devs]
    print(label, len(devs), "per-device mean cos:", means, "participations median", np.median(counts) if counts else None)
    out[label] = {"devices": len(devs), "mean_cosine_per_device": means,
                  "participations_median": float(np.median(counts)) if counts else None}
json.dump(out, open(f"/tmp/rep/pd-{attack}-{seed}.json", "w"), indent=1)
