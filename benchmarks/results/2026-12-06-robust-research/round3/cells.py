"""One Markdown row per cell of the grids given: seed, attack, rule, accuracy (the bench's, mean of
the last 3 rounds; backdoor success in brackets), the mean of rounds 81-100 from `accuracy_curve`,
the rule's left-out updates (honest / attacking of those accepted), the norm bound's exclusions
where there were any, the cell's wall seconds, and the file.

    python cells.py screen-seed0.json screen-seed2.json ...
"""

from __future__ import annotations

import json
import os
import sys


def rows(paths: list[str]) -> str:
    out = ["| seed | attack | rule | accuracy | last 20 | left out, honest / attacking | excluded | wall s | file |",
           "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        doc = json.load(open(p))
        seed = doc["grid"]["seed"]
        for c in doc["cells"]:
            curve = c["accuracy_curve"]
            tail = curve[80:100]
            last20 = sum(tail) / len(tail) if tail else float("nan")
            bd = "" if c["backdoor_success"] is None else f" ({c['backdoor_success']:.2f})"
            s, e = c.get("screened") or {}, c.get("excluded") or {}
            left = f"{s.get('honest', 0)} / {s.get('attackers', 0)}" + (
                f" of {s['reports']}" if s.get("reports", 1000) != 1000 else "")
            exc = f"{e.get('honest', 0)} / {e.get('attackers', 0)}" if (e.get("honest") or e.get("attackers")) else ""
            out.append(f"| {seed} | {c['attack']} | `{c['defense']}` | {c['final_accuracy']:.3f}{bd} | {last20:.3f} "
                       f"| {left} | {exc} | {c['wall_seconds']:.0f} | `{os.path.basename(p)[:-5]}` |")
    return "\n".join(out)


if __name__ == "__main__":
    print(rows(sys.argv[1:]))
