"""The Markdown and PNG of `fedge bench robustness`, from its JSON document alone: one table
and one heat map per partition and attacker share (attacks down, defences across, final
accuracy with backdoor success in brackets), and per table the figures the defence is judged
by, each against the grid's own clean FedAvg cell (`none` × `mean`):

- the default defence's worst attack, in points under clean FedAvg;
- plain FedAvg's largest loss under any attack;
- the default with no attack, in points over (+) or under (−) clean FedAvg;
- the default's highest backdoor success.

    fedge bench robustness --render out.json    # writes out.md and out.png from an existing JSON
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.tools.beside_json import png_metadata
from fedge.tools.plots import pyplot

TITLE = "# fedge bench robustness"
CLEAN, MEAN = "none", "mean"


def _tables(doc: dict) -> dict[tuple[str, float], list[dict]]:
    """Cells by (partition, attacker share); the clean cells (share 0) join every share's table."""
    shares: dict[str, set[float]] = {}
    for c in doc["cells"]:
        if c["attack"] != CLEAN:
            shares.setdefault(c["partition"], set()).add(c["attackers_fraction"])
    out: dict[tuple[str, float], list[dict]] = {}
    for c in doc["cells"]:
        for share in ([c["attackers_fraction"]] if c["attack"] != CLEAN else sorted(shares.get(c["partition"], {0.0}))):
            out.setdefault((c["partition"], share), []).append(c)
    return out


def _order(values, preferred) -> list:
    seen = [v for v in preferred if v in values]
    return seen + sorted(v for v in values if v not in seen)


def summary(cells: list[dict]) -> dict:
    """The figures above for one table; None where the grid lacks the cells to say."""
    def cell(attack, defense):
        return next((c for c in cells if c["attack"] == attack and c["defense"] == defense), None)

    default = next((c["defense"] for c in cells if c.get("default")), None)
    clean = cell(CLEAN, MEAN)
    out = {"default": default, "clean_fedavg": clean["final_accuracy"] if clean else None,
           "default_worst_attack": None, "default_worst_points": None, "fedavg_largest_loss_points": None,
           "fedavg_worst_attack": None, "default_clean_change_points": None, "default_backdoor_max": None}
    attacked = [c for c in cells if c["attack"] != CLEAN]
    ours = [c for c in attacked if c["defense"] == default]
    if ours:
        worst = min(ours, key=lambda c: c["final_accuracy"])
        out["default_worst_attack"] = worst["attack"]
        backdoors = [c["backdoor_success"] for c in ours if c["backdoor_success"] is not None]
        out["default_backdoor_max"] = max(backdoors) if backdoors else None
        if clean:
            out["default_worst_points"] = 100 * (clean["final_accuracy"] - worst["final_accuracy"])
    fedavg = [c for c in attacked if c["defense"] == MEAN]
    if fedavg and clean:
        worst = min(fedavg, key=lambda c: c["final_accuracy"])
        out["fedavg_worst_attack"] = worst["attack"]
        out["fedavg_largest_loss_points"] = 100 * (clean["final_accuracy"] - worst["final_accuracy"])
    if clean and default and cell(CLEAN, default):
        out["default_clean_change_points"] = 100 * (cell(CLEAN, default)["final_accuracy"] - clean["final_accuracy"])
    return out


def _points(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _signed(v) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def _fraction(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _updates(g: dict) -> str:
    kind = "fp32 dense" if g["quant_bits"] == 32 else f"int{g['quant_bits']}"
    return kind if g["topk_fraction"] >= 1 else f"{kind}, top {g['topk_fraction']:.0%}"


# Grid fields that JSONs written before them lack, at the value those runs used.
_OLDER = {"guard_fraction": 0.0, "omniscient": False, "final_window": 3, "quant_bits": 32, "topk_fraction": 1.0,
          "seed": 0}


def markdown(doc: dict) -> str:
    g = {**_OLDER, **doc["grid"]}
    lines = [f"{TITLE}: {g['dataset']}, {g['devices']} devices, {g['clients_per_round']} a round, "
             f"{g['rounds']} rounds, seed {g['seed']}", "",
             f"Updates: {_updates(g)}; guard set "
             f"{g['guard_fraction']:.0%} of the data; colluders {'' if g['omniscient'] else 'not '}omniscient. "
             f"Global accuracy, mean of the last {g['final_window']} rounds; backdoor success in brackets; "
             "* marks the shipped default defence.", ""]
    for (partition, share), cells in sorted(_tables(doc).items()):
        attacks = _order({c["attack"] for c in cells}, g["attacks"])
        defenses = _order({c["defense"] for c in cells}, g["defenses"])
        default = next((c["defense"] for c in cells if c.get("default")), None)
        by = {(c["attack"], c["defense"]): c for c in cells}
        lines += [f"## {partition}, {share:.0%} attackers", "",
                  "| attack | " + " | ".join(d + ("*" if d == default else "") for d in defenses) + " |",
                  "|---|" + "---|" * len(defenses)]
        for attack in attacks:
            row = []
            for d in defenses:
                c = by.get((attack, d))
                bd = "" if c is None or c["backdoor_success"] is None else f" ({c['backdoor_success']:.2f})"
                row.append("" if c is None else f"{c['final_accuracy']:.3f}{bd}")
            lines.append(f"| {attack} | " + " | ".join(row) + " |")
        s = summary(cells)
        lines += ["", f"- default ({s['default'] or 'not in this grid'}): worst attack "
                      f"{s['default_worst_attack'] or 'n/a'}, {_points(s['default_worst_points'])} points under "
                      f"clean FedAvg ({_fraction(s['clean_fedavg'])}); "
                      f"with no attack {_signed(s['default_clean_change_points'])} points; highest backdoor "
                      f"success {_fraction(s['default_backdoor_max'], 2)}",
                  f"- plain FedAvg: largest loss {_points(s['fedavg_largest_loss_points'])} points "
                  f"({s['fedavg_worst_attack'] or 'n/a'})", ""]
    if doc.get("errors"):
        lines += ["## Cells that failed", ""] + [f"- {e['attack']} vs {e['defense']} {e['partition']} "
                                                   f"{e['attackers_fraction']}: {e['error']}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> Path | None:
    """One heat map per table (attacks × defences, final accuracy); None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    tables = sorted(_tables(doc).items())
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(1.2 + 0.9 * max(len({c["defense"] for c in t[1]})
                                                                       for t in tables) * len(tables), 5.5),
                             squeeze=False)
    for ax, ((partition, share), cells) in zip(axes[0], tables):
        attacks = _order({c["attack"] for c in cells}, doc["grid"]["attacks"])
        defenses = _order({c["defense"] for c in cells}, doc["grid"]["defenses"])
        grid = np.full((len(attacks), len(defenses)), np.nan)
        for c in cells:
            grid[attacks.index(c["attack"]), defenses.index(c["defense"])] = c["final_accuracy"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
        default = next((c["defense"] for c in cells if c.get("default")), None)
        ax.set_xticks(range(len(defenses)), [d + ("*" if d == default else "") for d in defenses], rotation=45,
                      ha="right", fontsize=7)
        ax.set_yticks(range(len(attacks)), attacks, fontsize=7)
        ax.set_title(f"{partition}, {share:.0%} attackers", fontsize=9)
    fig.suptitle("fedge bench robustness: global accuracy (* = default defence)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=png_metadata("bench robustness"))
    plt.close(fig)
    return path
