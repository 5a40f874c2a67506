"""The heterogeneity benchmark's derived numbers (pure: curves and rows in, numbers out).

    rounds_to_target     first round whose global accuracy reaches the target, or None
    final_accuracy       mean of the last `window` rounds (skewed partitions oscillate)
    multipliers          rounds on a partition / rounds on IID, per algorithm
    bytes_to_reach       cumulative uplink bytes until a curve first reaches a level
    evaluate_targets     issue 4's four targets, each met / not met / not measured, with why
"""

from __future__ import annotations

from collections.abc import Sequence

IID = "iid"


def rounds_to_target(curve: Sequence[float | None], target: float) -> int | None:
    """1-based round at which `curve` first reaches `target`; None if it never does."""
    for i, acc in enumerate(curve):
        if acc is not None and acc >= target:
            return i + 1
    return None


def final_accuracy(curve: Sequence[float | None], window: int = 3) -> float | None:
    values = [v for v in curve[-window:] if v is not None]
    return sum(values) / len(values) if values else None


def bytes_to_reach(curve: Sequence[float | None], bytes_per_round: Sequence[int], level: float) -> int | None:
    """Uplink bytes sent up to and including the first round at which `curve` >= level; a round
    nobody scored (None) counts its bytes and is not a crossing."""
    sent = 0
    for acc, up in zip(curve, bytes_per_round):
        sent += up
        if acc is not None and acc >= level:
            return sent
    return None


def multiplier(rounds: int | None, iid_rounds: int | None) -> float | None:
    if rounds is None or iid_rounds is None:
        return None
    return rounds / iid_rounds


def multipliers(cells: Sequence[dict]) -> list[dict]:
    """For every non-IID cell whose (dataset, algorithm, personalization) also ran on IID."""
    iid = {(c["dataset"], c["algorithm"], c["personalization"]): c["rounds_to_target"]
           for c in cells if c["partition"] == IID}
    out = []
    for c in cells:
        key = (c["dataset"], c["algorithm"], c["personalization"])
        if c["partition"] == IID or key not in iid:
            continue
        out.append({"dataset": c["dataset"], "algorithm": c["algorithm"], "personalization": c["personalization"],
                    "partition": c["partition"], "rounds_to_target": c["rounds_to_target"],
                    "iid_rounds_to_target": iid[key], "multiplier": multiplier(c["rounds_to_target"], iid[key])})
    return out


def _target(tid: int, name: str, met: bool | None, detail: str, **numbers) -> dict:
    return {"id": tid, "name": name, "met": met, "detail": detail, **numbers}


def target_shards(mults: Sequence[dict], dataset: str, rounds_run: int, partition: str = "shards-2",
                  limit: float = 2.0, tid: int = 1) -> dict:
    """(1) The best algorithm on 2-class shards reaches the target in <= limit x its IID rounds.

    Every algorithm counts with personalization off and on, each against its own IID run
    (the same algorithm and personalization); the best is the smallest multiplier."""
    name = f"{partition}: best algorithm reaches 0.95x central in <= {limit:g}x its IID rounds"
    rows = [m for m in mults if m["dataset"] == dataset and m["partition"] == partition]
    if not rows:
        return _target(tid, name, None, "not measured (no shards cells with an IID counterpart)")
    fedavg = [m for m in rows if m["algorithm"] == "fedavg"]
    fedavg_text = ("FedAvg's multiplier: " + ", ".join(f"{_fmt_mult(m, rounds_run)} ({_pers(m)})" for m in fedavg)
                   if fedavg else "FedAvg not in the grid")
    reached = [m for m in rows if m["multiplier"] is not None]
    if not reached:
        return _target(tid, name, False, f"no algorithm reached the target on {partition}; {fedavg_text}",
                       best=None, fedavg_multiplier=None)
    best = min(reached, key=lambda m: (m["multiplier"], m["rounds_to_target"]))
    met = best["multiplier"] <= limit
    detail = (f"best: {best['algorithm']} ({_pers(best)}) in {best['rounds_to_target']} rounds vs "
              f"{best['iid_rounds_to_target']} on IID ({_fmt_mult(best, rounds_run)})")
    other = [m for m in reached if m["personalization"] != best["personalization"]]
    if other:
        runner = min(other, key=lambda m: (m["multiplier"], m["rounds_to_target"]))
        detail += f"; best with {_pers(runner)}: {runner['algorithm']} {_fmt_mult(runner, rounds_run)}"
    detail += f"; {fedavg_text}; one seed"
    return _target(tid, name, met, detail, best=best["algorithm"], best_personalization=best["personalization"],
                   best_multiplier=best["multiplier"],
                   fedavg_multiplier=next((m["multiplier"] for m in fedavg if not m["personalization"]), None))


def _pers(row: dict) -> str:
    return "personalization on" if row["personalization"] else "personalization off"


def _fmt_mult(row: dict, rounds_run: int | None = None) -> str:
    if row["multiplier"] is not None:
        return f"{row['multiplier']:.2f}x"
    if row["iid_rounds_to_target"] is None:
        return "n/a (IID never reached the target)"
    bound = f" > {rounds_run / row['iid_rounds_to_target']:.2f}x" if rounds_run else ""
    return f"never in {rounds_run or '?'} rounds{bound} (IID: {row['iid_rounds_to_target']})"


def accuracy_text(v: float | None) -> str:
    """An accuracy for a line of text; '-' where no device scored the final rounds (None), as
    `fedge simulate` prints an empty evaluation (also `fedge bench privacy`'s progress line)."""
    return "-" if v is None else f"{v:.3f}"


def _or_below(v: float | None) -> float:
    return -1.0 if v is None else v  # an unscored mean ranks below any accuracy


def _local_mean(local_only: dict, devices: Sequence[str] | None) -> float:
    """Local-only mean over `devices` (all when None), so runs with held-out devices compare like for like."""
    per = local_only.get("accuracy_per_device")
    if devices is None or not per:
        return local_only["accuracy_mean"]
    values = [per[d] for d in devices if d in per]
    return sum(values) / len(values) if values else local_only["accuracy_mean"]


def target_personalized(cells: Sequence[dict], modes: Sequence[dict], baselines: dict, dataset: str,
                        partition: str = "dirichlet-0.1", modes_partition: str | None = None) -> dict:
    """(2) Mean personalized >= local-only + 2 points and >= global + 10 points; worst client >= 85%.

    Candidates: every algorithm with personalization on, and every personalization mode run
    on this partition (modes_partition) except `none`. "Global" is the best global model of
    any run on the partition (the strictest reading); local-only is taken over the same
    devices as the candidate (mode runs hold some out as new devices)."""
    name = f"{partition}: personalized mean >= local-only + 2 pts and >= global + 10 pts; worst client >= 85%"
    base = baselines.get(partition)
    mine = [c for c in cells if c["dataset"] == dataset and c["partition"] == partition]
    mode_rows = [r for r in modes if modes_partition == partition and r["mode"] != "none"]
    candidates = [{"label": f"{c['algorithm']}, adapters", **c, "devices": None} for c in mine if c["personalization"]]
    candidates += [{"label": f"fedavg, {r['mode']} mode", **r, "devices": r.get("devices")} for r in mode_rows]
    if not candidates or not base:
        return _target(2, name, None, "not measured (needs personalization runs and baselines)")
    globals_ = [c["final_global_accuracy"] for c in [*mine, *(r for r in modes if modes_partition == partition)]
                if c.get("final_global_accuracy") is not None]
    if not globals_:
        return _target(2, name, None, "not measured (no run scored a global model)")
    best_global = max(globals_)
    judged = []
    for c in candidates:
        pm, pmin = c["personalized_accuracy_mean"], c["personalized_accuracy_min"]
        if pm is None or pmin is None:  # no device scored the final window's rounds (simulate/scoring.py)
            continue
        local = _local_mean(base["local_only"], c["devices"])
        checks = {"vs_local": pm >= local + 0.02, "vs_global": pm >= best_global + 0.10, "worst": pmin >= 0.85}
        judged.append((sum(checks.values()), pm, c, checks, local))
    if not judged:
        return _target(2, name, None, "not measured (no device scored a candidate's final rounds)")
    _, pm, best, checks, local = max(judged, key=lambda j: (j[0], j[1]))
    pmin, own = best["personalized_accuracy_min"], best["final_global_accuracy"]
    detail = (f"best: {best['label']}: mean {pm:.3f}, worst client {pmin:.3f}; local-only on the same devices "
              f"{local:.3f} ({pm - local:+.3f}); best global model of any run {best_global:.3f} "
              f"({pm - best_global:+.3f}); its own global model {accuracy_text(own)}")
    return _target(2, name, all(checks.values()), detail, checks=checks, candidate=best["label"])


def target_tail(cells: Sequence[dict], dataset: str, partition: str = "dirichlet-0.1", level: float = 0.85,
                tid: int = 5) -> dict:
    """The 10th percentile of the devices' personalized accuracy >= level, for the best
    algorithm with personalization on; its worst device beside it (one device's tiny test set
    makes the minimum noisy, so the goal is the percentile)."""
    name = f"{partition}: 10th percentile of the devices' personalized accuracy >= {level:.0%}"
    mine = [c for c in cells if c["dataset"] == dataset and c["partition"] == partition and c["personalization"]
            and c.get("personalized_accuracy_p10") is not None]
    if not mine:
        return _target(tid, name, None, "not measured (no personalization runs with the 10th percentile)")
    # p10 is read from the scored rounds alone (heterogeneity._finals): mean and min may still be None
    best = max(mine, key=lambda c: (c["personalized_accuracy_p10"], _or_below(c["personalized_accuracy_mean"])))
    p10 = best["personalized_accuracy_p10"]
    detail = (f"best: {best['algorithm']}, adapters: 10th percentile {p10:.3f}, worst device "
              f"{accuracy_text(best['personalized_accuracy_min'])}, "
              f"mean {accuracy_text(best['personalized_accuracy_mean'])}")
    return _target(tid, name, p10 >= level, detail, best=best["algorithm"], p10=p10,
                   worst=best["personalized_accuracy_min"])


def target_compression(rows: Sequence[dict], min_ratio: float = 100.0, max_drop: float = 0.01) -> dict:
    """(3) >= min_ratio x fewer uplink bytes than dense fp32 (on the wire, headers included),
    final accuracy within max_drop of dense, with error feedback; any model of the sweep."""
    name = (f">= {min_ratio:g}x uplink compression vs dense fp32 on the wire, accuracy within {max_drop * 100:g} pt, "
            "with EF")
    if not rows or not any(r["setting"] == "dense-fp32" for r in rows):
        return _target(3, name, None, "not measured (needs the dense fp32 run)")
    parts, met = [], False
    for model in dict.fromkeys(r.get("model", "adapters") for r in rows):
        ef = sorted((r for r in rows if r.get("model", "adapters") == model and r["error_feedback"]
                     and r["setting"] != "dense-fp32" and r["ratio_vs_dense"] is not None),
                    key=lambda r: -r["ratio_vs_dense"])  # a model whose dense run failed has no ratios
        if not ef:
            continue
        good = [r for r in ef if r["ratio_vs_dense"] >= min_ratio and r["accuracy_delta_vs_dense"] >= -max_drop]
        met = met or bool(good)
        top = (good or ef)[0]
        without = next((r for r in rows if r.get("model", "adapters") == model and r["setting"] == top["setting"]
                        and not r["error_feedback"]), None)
        text = (f"{model} model ({top.get('shared_params', '?')} shared params): {top['setting']} with EF "
                f"{top['ratio_vs_dense']:.1f}x, {top['accuracy_delta_vs_dense'] * 100:+.1f} pt")
        if without:
            text += f" (without EF {without['accuracy_delta_vs_dense'] * 100:+.1f} pt)"
        close = [r for r in ef if r["accuracy_delta_vs_dense"] >= -max_drop]
        if close and close[0] is not top:
            best = close[0]
            text += f"; highest ratio within {max_drop * 100:g} pt: {best['setting']} {best['ratio_vs_dense']:.1f}x"
        parts.append(text)
    if not parts:
        return _target(3, name, None, "not measured (no compressed run with error feedback)")
    return _target(3, name, met, "; ".join(parts))


def target_adapters(comparison: dict | None, min_ratio: float = 7.0) -> dict:
    """(4) Adapter-only uploads >= min_ratio x smaller than full-model at equal personalized accuracy."""
    name = f"adapter uploads >= {min_ratio:g}x smaller than full-model at equal personalized accuracy"
    if not comparison:
        return _target(4, name, None, "not measured (needs the adapters and full mode runs)")
    ratio = comparison["ratio_at_equal_accuracy"]
    detail = (f"per round {comparison['ratio_per_round']:.1f}x; to reach personalized mean "
              f"{accuracy_text(comparison['equal_accuracy_level'])}: "
              + (f"{ratio:.1f}x fewer bytes" if ratio is not None else "n/a"))
    return _target(4, name, ratio is not None and ratio >= min_ratio, detail)


def upload_comparison(adapters: dict, full: dict, window: int = 3) -> dict:
    """Bytes per round, and cumulative bytes to first reach the lower of the two final
    personalized accuracies (so both runs reach it)."""
    fa = final_accuracy(adapters["personalized_accuracy_curve"], window)
    ff = final_accuracy(full["personalized_accuracy_curve"], window)
    # None where no device scored a run's final window: no level both reach, no bytes to it
    level = None if fa is None or ff is None else min(fa, ff)
    ba, bf = (None, None) if level is None else (
        bytes_to_reach(adapters["personalized_accuracy_curve"], adapters["bytes_up_curve"], level),
        bytes_to_reach(full["personalized_accuracy_curve"], full["bytes_up_curve"], level))
    return {
        "adapters": {"bytes_up_per_round": adapters["bytes_up_per_round"], "personalized_accuracy_mean": fa,
                     "shared_params": adapters["model"]["shared_params"], "bytes_to_level": ba},
        "full": {"bytes_up_per_round": full["bytes_up_per_round"], "personalized_accuracy_mean": ff,
                 "shared_params": full["model"]["shared_params"], "bytes_to_level": bf},
        "ratio_per_round": full["bytes_up_per_round"] / adapters["bytes_up_per_round"],
        "equal_accuracy_level": level,
        "ratio_at_equal_accuracy": bf / ba if ba and bf else None,
    }
