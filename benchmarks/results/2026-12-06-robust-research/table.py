"""Markdown table of probe grids (the cells of every JSON given, merged; the first file's cell wins
where two hold the same attack and defence; give grids of one seed): attack x defence (final
accuracy, backdoor success in brackets), then per defence the worst attack cell against the bar
(the clean `mean` cell - 0.05), the clean cost against that cell, and the updates its filter left
out (honest / attackers).

    python table.py ../2026-12-04-robustness-device-clip-50dev-dirichlet.json screen1-seed0.json ...
"""

from __future__ import annotations

import json
import sys


def table(paths: list[str]) -> str:
    docs = [json.load(open(p)) for p in paths]
    cells = [c for d in docs for c in d["cells"]]
    defenses = list(dict.fromkeys(c["defense"] for c in cells))
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    at: dict = {}
    for c in cells:
        at.setdefault((c["attack"], c["defense"]), c)
    out = [f"- {p}: seed {d['grid']['seed']}, {d['grid']['rounds']} rounds, {', '.join(d['grid']['defenses'])}, "
           f"{len(d['cells'])} cells, {d['wall_seconds']:.0f} s wall, {d['grid']['workers']} workers"
           for p, d in zip(paths, docs)]
    out += ["",
           "| attack | " + " | ".join(defenses) + " |", "|---" * (len(defenses) + 1) + "|"]
    for a in attacks:
        row = []
        for d in defenses:
            c = at.get((a, d))
            if c is None:
                row.append("")
                continue
            bd = "" if c["backdoor_success"] is None else f" ({c['backdoor_success']:.2f})"
            row.append(f"{c['final_accuracy']:.3f}{bd}")
        out.append(f"| {a} | " + " | ".join(row) + " |")
    clean = at.get(("none", "mean"))
    if clean:
        bar = clean["final_accuracy"] - 0.05
        out += ["", f"bar = clean mean {clean['final_accuracy']:.3f} - 0.05 = {bar:.3f}", ""]
        for d in defenses:
            attacked = [at[(a, d)] for a in attacks if a != "none" and (a, d) in at]
            if not attacked:
                continue
            worst = min(attacked, key=lambda c: c["final_accuracy"])
            own = at.get(("none", d))
            cost = "" if own is None else (f", clean {own['final_accuracy']:.3f} "
                                           f"({own['final_accuracy'] - clean['final_accuracy']:+.3f})")
            left = []
            for c in attacked:
                s = c.get("screened") or {}
                if s and (s.get("honest") or s.get("attackers")):
                    left.append(f"{c['attack']} {s.get('honest', 0)}/{s.get('attackers', 0)} "
                                f"of {s.get('reports', '?')}")
            out.append(f"- {d}: worst {worst['attack']} {worst['final_accuracy']:.3f} "
                       f"({worst['final_accuracy'] - bar:+.3f} vs bar){cost}"
                       + (f"; left out honest/attackers: {', '.join(left)}" if left else ""))
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
