"""report.md and PNG plots from the heterogeneity benchmark's JSON document."""

from __future__ import annotations

from pathlib import Path

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.plots import pyplot

PLOTS = ("accuracy_vs_round.png", "personalized_vs_round.png", "accuracy_vs_uplink.png")
FILES = ("report.md", *PLOTS)
RECORD = ".fedge-report.json"  # what the benchmark wrote into the report folder (models/output_dir.py)
_TITLE = b"# Heterogeneity benchmark"  # report.md's first line


def claim_report_dir(report_dir) -> None:
    """Before the grid runs: the report folder may hold these names only as an earlier run's
    files (its record, or, from before the record, a report.md with this benchmark's title);
    someone else's report.md or PNG there stops the run now, not after an hour of training."""
    from fedge.models.output_dir import claim, starts_with

    out = Path(report_dir)
    legacy = FILES if starts_with(out / "report.md", _TITLE) else ()
    claim(out, list(FILES), RECORD, "bench heterogeneity", legacy=legacy)


def write_report(doc: dict, report_dir) -> list[Path]:
    """Write report.md and (with matplotlib) the plots; returns the paths written."""
    from fedge.models.output_dir import write_record

    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "report.md", markdown(doc).encode())
    written = [out / "report.md", *write_plots(doc, out)]
    write_record(out / RECORD, [p.name for p in written], "fedge bench heterogeneity")  # no PNG without matplotlib
    return written


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _kib(v) -> str:
    return "–" if v is None else f"{v / 1024:.1f}"


def _met(v) -> str:
    return {True: "**met**", False: "not met", None: "not measured"}[v]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def markdown(doc: dict) -> str:
    g = doc["grid"]
    c, h = g["coordinator"], g["coordinator"]["hyper"]
    env = doc["environment"]
    lines = [
        "# Heterogeneity benchmark" + (" (quick grid)" if doc["quick"] else ""), "",
        f"{g['devices']} devices, {c['clients_per_round']} sampled per round, {g['rounds']} rounds of {h['epochs']} "
        f"local epochs (SGD lr {h['lr']}, momentum {h['momentum']}, batch {h['batch_size']}), seed {g['seed']}; real "
        "device runtimes and "
        f"coordinator over the in-memory broker. Wall time {doc['wall_seconds']:.0f} s with {g['workers']} worker "
        f"process(es) on {env.get('cpus')} CPUs (Python {env.get('python')}, onnxruntime "
        f"{env.get('onnxruntime', '?')}).",
        "",
        f"Accuracies are percentages. *Final* = mean of the last {g['final_window']} rounds. *Rounds to target* = "
        f"first round whose global accuracy reaches {g['target_fraction']:g}x the centralized baseline of the same "
        "partition. Personalization *on* = LoRA adapters + global head shared, private head per device (scored); *off* "
        "= the same LoRA layer with the global head only (its per-device accuracy is the global model's). Uplink bytes "
        "are whole update messages as received, headers included.", "",
        "## Issue targets", "",
        *_table(["#", "target", "result", "measured"],
                [[t["id"], t["name"], _met(t["met"]), t["detail"]] for t in doc["targets"]]),
    ]
    lines += ["## Baselines", ""] + _table(
        ["partition", "centralized", "target", "local-only mean", "local-only worst"],
        [[p, _pct(b["central"]["accuracy"]), _pct(b["target_accuracy"]), _pct(b["local_only"]["accuracy_mean"]),
          _pct(b["local_only"]["accuracy_min"])] for p, b in doc["baselines"].items()])
    lines += ["## Cells", ""] + _table(
        ["dataset", "partition", "algorithm", "pers.", "rounds to target", "final global", "pers. mean", "pers. worst",
         "KiB up/round", "wall s"],
        [[c["dataset"], c["partition"], c["algorithm"], "on" if c["personalization"] else "off",
          c["rounds_to_target"] if c["rounds_to_target"] is not None else "–", _pct(c["final_global_accuracy"]),
          _pct(c["personalized_accuracy_mean"]), _pct(c["personalized_accuracy_min"]), _kib(c["bytes_up_per_round"]),
          f"{c['wall_seconds']:.1f}"] for c in doc["cells"]])
    failed = [f"{c['partition']} {c['algorithm']} personalization {'on' if c['personalization'] else 'off'}: "
              f"{c['declines']}" for c in doc["cells"] if c.get("declines")]
    if failed:
        lines += ["Tasks declined by devices (a diverging run shows up here as diverged):", "",
                  *(f"- {f}" for f in failed), ""]
    lines += _multiplier_section(doc)
    if doc["compression"]:
        rounds = g.get("compression_rounds", g["rounds"])
        about = {"adapters": "*adapters* (LoRA + global head, what the fleet uploads by default)",
                 "full": "*full* (the whole layer + global head: full-model FedAvg)"}
        models = [about.get(k, k) for k in dict.fromkeys(r.get("model", "adapters") for r in doc["compression"])]
        lines += ["## Communication", "",
                  f"FedAvg, personalization off, {g['compression_partition']}, {rounds} rounds; model: "
                  f"{' and '.join(models)}. Ratio = the same model's dense fp32 bytes per round / this setting's, both "
                  "as whole messages on the wire. Sparse indices travel as gap varints (about 1.2 B each).",
                  ""] + _table(
            ["model", "shared params", "setting", "error feedback", "final accuracy", "KiB up/round", "ratio vs dense",
             "Δ vs dense (pt)"],
            [[r.get("model", "adapters"), r.get("shared_params", "–"), r["setting"],
              "yes" if r["error_feedback"] else "no",
              _pct(r["final_accuracy"]), _kib(r["bytes_up_per_round"]),
              f"{r['ratio_vs_dense']:.1f}x" if r["ratio_vs_dense"] else "–",
              f"{100 * r['accuracy_delta_vs_dense']:+.1f}" if r["accuracy_delta_vs_dense"] is not None else "–"]
             for r in doc["compression"]])
    lines += _modes_section(doc)
    lines += _pretrained_section(doc)
    if doc["errors"]:
        lines += ["## Failed jobs", ""]
        lines += [f"- {e['kind']} {e.get('partition', '')} {e.get('algorithm', '')}: {e['error']}"
                  for e in doc["errors"]] + [""]
    return "\n".join(lines)


def _pretrained_section(doc: dict) -> list[str]:
    """The pretrained-backbone rows beside the random-backbone ones (issue 11)."""
    pre = doc.get("pretrained") or {}
    if "skipped" in pre:
        return ["## Pretrained backbone", "", f"Not run: {pre['skipped']}.", ""]
    if not pre.get("cells"):
        return []
    g = doc["grid"]
    lines = ["## Pretrained backbone", "",
             f"`fedge pretrain` on {pre['proxy_examples']} proxy examples ({pre['proxy_fraction']:.0%} of the dataset, "
             f"stratified, held by no device): {_pct(pre['accuracy'])}% before round 1 (on the test data of "
             "`fedge pretrain`'s own Dirichlet-0.1 split of the other examples). "
             "The pretrained rows train on the other examples (the random rows on all of them), start every layer "
             "from the pretrained weights (fc1 frozen, fc2 LoRA, the head from the pretrained classifier), and their "
             "baselines (local-only, centralized) start from the same weights; rounds to target are against the "
             "pretrained centralized baseline.", "",
             *_table(["#", "target (pretrained rows)", "result", "measured"],
                     [[t["id"], t["name"], _met(t["met"]), t["detail"]] for t in pre["targets"]]),
             *_table(["partition", "backbone", "centralized", "target", "local-only mean", "local-only worst"],
                     [[p, name, _pct(b["central"]["accuracy"]), _pct(b["target_accuracy"]),
                       _pct(b["local_only"]["accuracy_mean"]), _pct(b["local_only"]["accuracy_min"])]
                      for p in g["pretrained_partitions"]
                      for name, b in (("random", doc["baselines"].get(p)), ("pretrained", pre["baselines"].get(p)))
                      if b])]
    first = g["datasets"][0]
    random = {(c["partition"], c["algorithm"], c["personalization"]): c for c in doc["cells"] if c["dataset"] == first}
    rows = []
    for c in pre["cells"]:
        r = random.get((c["partition"], c["algorithm"], c["personalization"]))
        rows.append([c["partition"], c["algorithm"], "on" if c["personalization"] else "off",
                     _both(r, c, "rounds_to_target", _rounds), _both(r, c, "final_global_accuracy"),
                     _both(r, c, "personalized_accuracy_mean"), _both(r, c, "personalized_accuracy_p10"),
                     _both(r, c, "personalized_accuracy_min")])
    lines += ["Each cell: random backbone / pretrained backbone.", "",
              *_table(["partition", "algorithm", "pers.", "rounds to target", "final global", "pers. mean",
                       "pers. 10th pct", "pers. worst"], rows)]
    mults = {(m["algorithm"], m["personalization"], m["partition"]): m for m in doc["multipliers"]
             if m["dataset"] == first}
    mrows = []
    for m in pre["multipliers"]:
        r = mults.get((m["algorithm"], m["personalization"], m["partition"]))
        mrows.append([m["partition"], m["algorithm"], "on" if m["personalization"] else "off",
                      _mult(r) if r else "–", _mult(m)])
    if mrows:
        lines += ["Non-IID / IID round multiplier:", "",
                  *_table(["partition", "algorithm", "pers.", "random", "pretrained"], mrows)]
    dense = {r["setting"]: r for r in doc["compression"] if r.get("model", "adapters") == "adapters"
             and r["error_feedback"]}
    crows = [[r["setting"], _pct(dense[r["setting"]]["final_accuracy"]) if r["setting"] in dense else "–",
              _delta(dense.get(r["setting"], {}).get("accuracy_delta_vs_dense")), _pct(r["final_accuracy"]),
              _delta(r["accuracy_delta_vs_dense"]), f"{r['ratio_vs_dense']:.1f}x" if r["ratio_vs_dense"] else "–"]
             for r in pre["compression"]]
    if crows:
        lines += [f"Compression's accuracy cost (adapters model, error feedback on, {g['compression_partition']}):", "",
                  *_table(["setting", "random: final", "random: Δ vs dense (pt)", "pretrained: final",
                           "pretrained: Δ vs dense (pt)", "pretrained: ratio vs dense"], crows)]
    return lines


def _rounds(v) -> str:
    return "–" if v is None else str(v)


def _both(random: dict | None, pretrained: dict, key: str, fmt=_pct) -> str:
    return f"{fmt(random[key]) if random else '–'} / {fmt(pretrained[key])}"


def _mult(m: dict) -> str:
    if m["multiplier"] is not None:
        return f"{m['multiplier']:.2f}x"
    return "never" if m["rounds_to_target"] is None else f"({m['rounds_to_target']}, IID never)"


def _delta(v) -> str:
    return "–" if v is None else f"{100 * v:+.1f}"


def _multiplier_section(doc: dict) -> list[str]:
    rows = doc["multipliers"]
    if not rows:
        return []
    rounds = doc["grid"]["rounds"]
    partitions = list(dict.fromkeys(r["partition"] for r in rows))
    table = {}
    for r in rows:
        cell = "–" if r["multiplier"] is None else f"{r['multiplier']:.2f}x"
        if r["rounds_to_target"] is None and r["iid_rounds_to_target"]:
            cell = f"never (> {rounds / r['iid_rounds_to_target']:.2f}x)"
        elif r["rounds_to_target"] is None:
            cell = "never"
        elif r["iid_rounds_to_target"] is None:
            cell = f"({r['rounds_to_target']}, IID never)"
        key = (r["dataset"], r["algorithm"], "on" if r["personalization"] else "off")
        table.setdefault(key, {})[r["partition"]] = cell
    ordered = sorted(table.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))
    return ["## Non-IID / IID round multiplier", "",
            "Rounds to target on the partition / rounds on IID with the same algorithm and personalization; *never* = "
            f"not within the {rounds} rounds run (the bound is {rounds} / the IID rounds).", ""] + _table(
        ["dataset", "algorithm", "pers.", *partitions], [[d, a, p, *(v.get(x, "–") for x in partitions)]
                                                          for (d, a, p), v in ordered])


def _modes_section(doc: dict) -> list[str]:
    g = doc["grid"]
    lines = []
    if doc["personalization_modes"]:
        lines += ["## Personalization modes", "",
                  f"FedAvg on {g['modes_partition']}; {g['new_devices']} devices held out of training (new devices) "
                  f"are scored with the final global model as received, then after {g['finetune_steps']} head-only "
                  "local steps.",
                  ""]
        rows = []
        for r in doc["personalization_modes"]:
            n = r["new_devices"] or {}
            rows.append([r["mode"], r["shared_params"], _kib(r["bytes_up_per_round"]), _pct(r["final_global_accuracy"]),
                         _pct(r["personalized_accuracy_mean"]), _pct(r["personalized_accuracy_min"]),
                         _pct(n.get("global_accuracy_mean")), _pct(n.get("tuned_accuracy_mean"))])
        lines += _table(["mode", "shared params", "KiB up/round", "final global", "pers. mean", "pers. worst",
                         "new devices: global", "new devices: tuned"], rows)
    c = doc["upload_comparison"]
    if c:
        lines += ["## Adapter vs full-model uploads", "",
                  f"adapters: {c['adapters']['shared_params']} shared parameters, "
                  f"{_kib(c['adapters']['bytes_up_per_round'])} KiB/round, personalized "
                  f"{_pct(c['adapters']['personalized_accuracy_mean'])}; full: "
                  f"{c['full']['shared_params']} shared parameters, {_kib(c['full']['bytes_up_per_round'])} KiB/round, "
                  f"personalized {_pct(c['full']['personalized_accuracy_mean'])}. Per round the full model sends "
                  f"{c['ratio_per_round']:.1f}x more; to first reach a personalized mean of "
                  f"{_pct(c['equal_accuracy_level'])} (the lower final of the two) it sends " +
                  (f"{c['ratio_at_equal_accuracy']:.1f}x more in total." if c["ratio_at_equal_accuracy"] else "–."), ""]
    return lines


def write_plots(doc: dict, out: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for name, key, personal in (("accuracy_vs_round.png", "global_accuracy_curve", False),
                                ("personalized_vs_round.png", "personalized_accuracy_curve", True)):
        cells = [c for c in doc["cells"] if c["personalization"] == personal]
        panels = list(dict.fromkeys((c["dataset"], c["partition"]) for c in cells))
        if not panels:
            continue
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
        for ax, (dataset, partition) in zip(axes.flat, panels):
            for c in (c for c in cells if (c["dataset"], c["partition"]) == (dataset, partition)):
                ax.plot(range(1, len(c[key]) + 1), c[key], label=c["algorithm"], lw=1.2)
            base = doc["baselines"].get(partition)
            if base:
                if personal:
                    ax.axhline(base["local_only"]["accuracy_mean"], color="grey", ls="--", lw=1, label="local-only")
                else:
                    ax.axhline(base["central"]["accuracy"], color="black", ls="--", lw=1, label="centralized")
                    ax.axhline(base["target_accuracy"], color="black", ls=":", lw=1, label="target")
            ax.set(title=f"{dataset} {partition}", xlabel="round", ylim=(0, 1))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        axes.flat[0].set_ylabel("personalized accuracy (mean)" if personal else "global accuracy")
        axes.flat[0].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    if doc["compression"]:
        models = list(dict.fromkeys(r.get("model", "adapters") for r in doc["compression"]))
        fig, axes = plt.subplots(1, len(models) + 1, figsize=(5.2 * (len(models) + 1), 4.2), squeeze=False)
        scatter = axes[0, -1]
        for ax, model in zip(axes[0], models):
            for r in (r for r in doc["compression"] if r.get("model", "adapters") == model):
                sent, xs = 0, []
                for b in r["bytes_up_curve"]:
                    sent += b
                    xs.append(sent / 1024)
                label = f"{r['setting']}{'' if r['error_feedback'] else ' no EF'}"
                line, = ax.plot(xs, r["global_accuracy_curve"], label=label, lw=1.1,
                                ls="-" if r["error_feedback"] else ":")
                marker = ("o" if model == models[0] else "s") if r["error_feedback"] else "x"
                scatter.scatter(r["bytes_up_per_round"] / 1024, r["final_accuracy"], marker=marker,
                                color=line.get_color())
                scatter.annotate(f"{model} {label}", (r["bytes_up_per_round"] / 1024, r["final_accuracy"]), fontsize=6)
            # the y-range fits the curves: a quick run that stays below 0.5 must not leave the panel empty
            lows = [a for r in doc["compression"] if r.get("model", "adapters") == model
                    for a in r["global_accuracy_curve"] if a is not None]
            ax.set(xscale="log", xlabel="cumulative uplink KiB (on the wire)", ylabel="global accuracy",
                   ylim=(max(0.0, min(lows, default=0.0) - 0.05), 1), title=f"{model} model: accuracy vs uplink bytes")
            ax.legend(fontsize=6, loc="lower right")
        scatter.set(xscale="log", xlabel="uplink KiB per round", ylabel="final accuracy",
                    title="final accuracy vs bytes/round (x: no EF)")
        for ax in axes[0]:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_uplink.png", dpi=100)
        plt.close(fig)
        written.append(out / "accuracy_vs_uplink.png")
    return written
