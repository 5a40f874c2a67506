"""The Markdown and PNG of `fedge bench robustness`, from its JSON document alone: one table
and one heat map per partition and attacker share (attacks down, defences across; in the
table the last-3-round and the tail accuracy, backdoor success in brackets; in the heat map
the last-3-round accuracy), and per table the figures the defence is judged
by, each against the grid's own clean FedAvg cell (`none` × `mean`):

- the default defence's worst attack, in points under clean FedAvg;
- plain FedAvg's largest loss under any attack;
- the default with no attack, in points over (+) or under (−) clean FedAvg;
- the default's highest backdoor success.

The first three again on `tail_accuracy`, the mean of the last max(3, ceil(rounds / 5)) rounds
(20 of 100): on 50 devices, Dirichlet 0.1, 100 rounds the curves do not settle (the clean seed-2
cells range over 11-15 points in rounds 81-100 and move by up to 8 from one round to the next:
benchmarks/results/2026-12-06-robust-research/README.md), so a mean of 3 rounds moves with
the last few rounds' swings. Cells of JSONs written before the field get it from their
`accuracy_curve`, or "–" without one.

    fedge bench robustness --render out.json    # writes out.md and out.png from an existing JSON
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedge.tools.beside_json import png_metadata
from fedge.tools.plots import pyplot

TITLE = "# fedge bench robustness"
CLEAN, MEAN = "none", "mean"


def tail_window(rounds: int) -> int:
    """Rounds `tail_accuracy` averages: max(3, ceil(rounds / 5)), 20 of 100."""
    return max(3, -(-rounds // 5))


def _score(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tail(curve: list, rounds: int) -> tuple[float | None, int]:
    """(mean, count) over the last tail_window(rounds) entries of an accuracy curve; entries with no
    evaluation (null) are skipped and not counted; (None, 0) when none is left. ValueError on an
    entry that is neither a finite number nor null (a hand-edited or foreign JSON)."""
    if not isinstance(curve, list) or any(v is not None and not _score(v) for v in curve):
        raise ValueError("accuracy_curve is not a list of finite numbers and nulls")
    known = [v for v in curve[-tail_window(rounds):] if v is not None]
    return (sum(known) / len(known), len(known)) if known else (None, 0)


def cell_tail(cell: dict, rounds: int) -> float | None:
    """The cell's `tail_accuracy`: as recorded, else from its `accuracy_curve`, else None (older
    JSONs); ValueError on a recorded value or curve that is not numbers."""
    if "tail_accuracy" in cell:
        if cell["tail_accuracy"] is not None and not _score(cell["tail_accuracy"]):
            raise ValueError(f"tail_accuracy {cell['tail_accuracy']!r} is not a number")
        return cell["tail_accuracy"]
    return tail(cell["accuracy_curve"], rounds)[0] if "accuracy_curve" in cell else None


def _with_tails(doc: dict) -> list[dict]:
    """doc's cells, each with `tail_accuracy` (None where neither it nor a curve is recorded)."""
    rounds = doc["grid"]["rounds"]
    return [{**c, "tail_accuracy": cell_tail(c, rounds)} for c in doc["cells"]]


def check_cells(doc: dict) -> None:
    """ValueError naming the first cell whose tail figure or curve is not numbers."""
    grid, cells = doc.get("grid"), doc.get("cells")
    if not (isinstance(grid, dict) and type(grid.get("rounds")) is int and isinstance(cells, list)
            and all(isinstance(c, dict) for c in cells)):
        raise ValueError("no grid with its rounds, or no list of cells")
    for i, c in enumerate(cells):
        try:
            cell_tail(c, grid["rounds"])
        except ValueError as exc:
            raise ValueError(f"cell {i} ({c.get('attack')} vs {c.get('defense')}): {exc}") from None


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


def summary(cells: list[dict], figure: str = "final_accuracy") -> dict:
    """The figures above for one table, on `figure` (final_accuracy or tail_accuracy); None where
    the grid lacks the cells to say."""
    def cell(attack, defense):
        return next((c for c in cells if c["attack"] == attack and c["defense"] == defense), None)

    default = next((c["defense"] for c in cells if c.get("default")), None)
    clean = cell(CLEAN, MEAN)
    out = {"default": default, "clean_fedavg": clean[figure] if clean else None,
           "default_worst_attack": None, "default_worst_points": None, "fedavg_largest_loss_points": None,
           "fedavg_worst_attack": None, "default_clean_change_points": None, "default_backdoor_max": None}
    attacked = [c for c in cells if c["attack"] != CLEAN]
    ours = [c for c in attacked if c["defense"] == default]
    if ours:
        worst = min(ours, key=lambda c: c[figure])
        out["default_worst_attack"] = worst["attack"]
        backdoors = [c["backdoor_success"] for c in ours if c["backdoor_success"] is not None]
        out["default_backdoor_max"] = max(backdoors) if backdoors else None
        if clean:
            out["default_worst_points"] = 100 * (clean[figure] - worst[figure])
    fedavg = [c for c in attacked if c["defense"] == MEAN]
    if fedavg and clean:
        worst = min(fedavg, key=lambda c: c[figure])
        out["fedavg_worst_attack"] = worst["attack"]
        out["fedavg_largest_loss_points"] = 100 * (clean[figure] - worst[figure])
    if clean and default and cell(CLEAN, default):
        out["default_clean_change_points"] = 100 * (cell(CLEAN, default)[figure] - clean[figure])
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


def _figures(c: dict | None) -> str:
    """One table entry: last-window mean / tail mean (backdoor success)."""
    if c is None:
        return ""
    bd = "" if c["backdoor_success"] is None else f" ({c['backdoor_success']:.2f})"
    tail_text = "–" if c["tail_accuracy"] is None else f"{c['tail_accuracy']:.3f}"
    return f"{c['final_accuracy']:.3f} / {tail_text}{bd}"


def _verdicts(s: dict, prefix: str = "", backdoor: bool = True) -> list[str]:
    """The summary's lines, as the report has always written them after `prefix`."""
    bd = f"; highest backdoor success {_fraction(s['default_backdoor_max'], 2)}" if backdoor else ""
    return [f"- {prefix}default ({s['default'] or 'not in this grid'}): worst attack "
            f"{s['default_worst_attack'] or 'n/a'}, {_points(s['default_worst_points'])} points under "
            f"clean FedAvg ({_fraction(s['clean_fedavg'])}); "
            f"with no attack {_signed(s['default_clean_change_points'])} points{bd}",
            f"- {prefix}plain FedAvg: largest loss {_points(s['fedavg_largest_loss_points'])} points "
            f"({s['fedavg_worst_attack'] or 'n/a'})"]


def _tail_verdicts(cells: list[dict], window: int) -> list[str]:
    prefix = f"over the last {window} rounds (`tail_accuracy`): "
    if any(c["tail_accuracy"] is None for c in cells):
        return [f"- {prefix}n/a (cells without an `accuracy_curve` in this JSON)"]
    return _verdicts(summary(cells, "tail_accuracy"), prefix, backdoor=False)


def markdown(doc: dict) -> str:
    g = {**_OLDER, **doc["grid"]}
    window = tail_window(g["rounds"])
    lines = [f"{TITLE}: {g['dataset']}, {g['devices']} devices, {g['clients_per_round']} a round, "
             f"{g['rounds']} rounds, seed {g['seed']}", "",
             f"Updates: {_updates(g)}; guard set "
             f"{g['guard_fraction']:.0%} of the data; colluders {'' if g['omniscient'] else 'not '}omniscient. "
             f"Global accuracy, mean of the last {g['final_window']} rounds / mean of the last {window} "
             "(`tail_accuracy`, steadier where the curve has not settled; – where the JSON holds no "
             "per-round curve); backdoor success in brackets; * marks the shipped default defence. "
             f"The verdict lines come twice: on the last {g['final_window']} rounds, then on the last {window}.",
             ""]
    for (partition, share), cells in sorted(_tables({**doc, "cells": _with_tails(doc)}).items()):
        attacks = _order({c["attack"] for c in cells}, g["attacks"])
        defenses = _order({c["defense"] for c in cells}, g["defenses"])
        default = next((c["defense"] for c in cells if c.get("default")), None)
        by = {(c["attack"], c["defense"]): c for c in cells}
        lines += [f"## {partition}, {share:.0%} attackers", "",
                  "| attack | " + " | ".join(d + ("*" if d == default else "") for d in defenses) + " |",
                  "|---|" + "---|" * len(defenses)]
        for attack in attacks:
            lines.append(f"| {attack} | " + " | ".join(_figures(by.get((attack, d))) for d in defenses) + " |")
        lines += ["", *_verdicts(summary(cells)), *_tail_verdicts(cells, window), ""]
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
