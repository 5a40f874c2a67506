"""Read logprobe.py's per-round logs and print how well cos(update, current model) separates the
attackers' updates from the honest ones: per update (AUC, share under thresholds) and per device
(each device's mean cosine from round 10 on; * = one of the run's attackers, in a clean run the
devices that attack in the others).

    python analyze.py /tmp/lf/s0-label_flip /tmp/lf/s0-none ...   (folders named s<seed>-<attack>)
"""
from __future__ import annotations

import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "2026-12-06-robust-research"))
import probe  # noqa: E402


def auc_lower(pos, neg) -> float:
    """P(an attacker's value < an honest one's), ties half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos < neg).mean() + 0.5 * (pos == neg).mean())


def load(folder: str):
    """(cosines per tensor name and "all", attacker flags, rounds, device ids) of every logged update."""
    feats, bad_flags, rounds, ids = {}, [], [], []
    seed = int(os.path.basename(folder)[1:].split("-")[0])
    bad = probe._attackers(seed)
    for f in sorted(glob.glob(os.path.join(folder, "round-*.npz"))):
        d = np.load(f)
        theta, rows, sizes = d["params"], d["heads"], d["sizes"]
        off = np.concatenate([[0], np.cumsum(sizes)])
        parts = {"all": (rows, theta)}
        parts.update({str(n): (rows[:, off[j]:off[j + 1]], theta[off[j]:off[j + 1]]) for j, n in enumerate(d["names"])})
        for name, (h, p) in parts.items():
            n = np.linalg.norm(h, axis=1) * np.linalg.norm(p)
            feats.setdefault(name, []).extend((h @ p / np.where(n > 0, n, 1.0)).tolist())
        bad_flags += [str(i) in bad for i in d["ids"]]
        rounds += [int(os.path.basename(f)[6:10])] * len(rows)
        ids += [str(i) for i in d["ids"]]
    return {k: np.array(v) for k, v in feats.items()}, np.array(bad_flags), np.array(rounds), ids


def main(folders: list[str]) -> None:
    for folder in folders:
        feats, bad, rounds, ids = load(folder)
        late = rounds >= 20
        print(f"{os.path.basename(folder)}: per update, rounds 20-100 (all rounds)")
        for name, v in feats.items():
            under = " ".join(f"<{t}: honest {(v[late & ~bad] < t).mean():.2f} "
                             f"attackers {(v[late & bad] < t).mean():.2f}" for t in (0, -0.01))
            print(f"  {name:20s} AUC {auc_lower(v[late & bad], v[late & ~bad]):.3f} "
                  f"({auc_lower(v[bad], v[~bad]):.3f})  {under}")
        per = {}
        for i, c, r, b in zip(ids, feats["all"], rounds, bad):
            if r >= 10:
                per.setdefault((i, b), []).append(c)
        means = sorted((float(np.mean(c)), b) for (i, b), c in per.items())
        print("  per device, mean cos from round 10:", " ".join(f"{m:+.3f}{'*' if b else ''}" for m, b in means))


if __name__ == "__main__":
    main(sys.argv[1:])
