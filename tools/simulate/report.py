"""Terminal table, run.json and a PNG of the curves.

run.json schema (version 1):
    schema: 1
    config: the SimConfig fields, with `coordinator` the CoordinatorConfig as it ran (what the
            simulator sets included: seed, artifacts_dir, state_db, clamped clients_per_round,
            effective momentum), plus the backend actually used, `standardize` as it ran (true or
            false, never null), `standardize_why` (--data: "--standardize", "--no-standardize"
            or "auto: " and the finding that decided; null for a shipped dataset) and
            `divided_by_255` (--data: true when auto read 8-bit intensities saved as float or a
            wider integer as x / 255, as devices read uint8, else false; null for a shipped dataset)
    model: {name, model_id, shared_params, personal_params}: the spec after --personalization
    rounds: list of
        round                        int, the coordinator's round id
        committed                    bool
        participants, selected       int: reports aggregated / devices asked
        global_accuracy              fraction in [0, 1] (global head, union of held-out splits), or null;
                                     from the coordinator's federated evaluation, in which every device
                                     scores the model on its own split (coordinator/evaluation.py)
        global_loss                  float: the same evaluation's example-weighted cross-entropy (nats),
                                     or null (no evaluation yet)
        personalized_accuracy_mean   fraction: mean over devices of each device's personalized model on
                                     its own held-out split: its private head (adapters, head, full),
                                     the global head fine-tuned on its data (finetune), or the global
                                     model (none, or a spec without a personal head)
        personalized_accuracy_min    fraction: the worst device
        personalized_loss_mean       float: mean over devices of the personalized model's cross-entropy
        evaluated_devices            int: devices whose evaluation reports these numbers rest on (with test examples)
        train_loss                   float: example-weighted mean of the training loss the round's
                                     accepted updates reported (their local steps), or null; with
                                     the dual head it is the sum of both heads' cross-entropies
                                     (so about 2 ln C at chance), and secure rounds report none
        bytes_up                     int: update messages received this round, as sent on the wire
        bytes_up_dense               int: the same messages with dense fp32 deltas
        bytes_down                   int: task and ack messages sent this round
        bytes_eval_up, bytes_eval_down  int: evaluation reports received / evaluation tasks sent after
                                     this round's commit (0 when it did not commit); not in bytes_up/down
        seconds                      float: wall time of the round, evaluation included
        backdoor_success             fraction, only with --attack backdoor: non-target held-out inputs,
                                     trigger stamped, that the global model calls the target class
        epsilon                      float: with [coordinator.privacy] on, the ε (at privacy.delta, by
                                     privacy.accountant) of every round charged so far, this one
                                     included; null without privacy. A round the budget refuses ends the
                                     run: it has no row
    baselines (when requested):
        local_only: {accuracy_mean, accuracy_min, epochs}
        central:    {accuracy, epochs}
    new_devices (with --new-devices K; {} otherwise): devices that never trained, on the final model
        count, steps                               int: K, and the head-only steps each then takes
        evaluated                                  int: those of the K with held-out examples (the
                                                   means and minimums below are over these)
        global_accuracy_mean, global_accuracy_min  fraction: the global model as received
        tuned_accuracy_mean, tuned_accuracy_min    fraction after `steps` steps, or null when steps = 0
    summary: {rejections: {reason: count}, declines: {reason: count}, attackers: [device ids] ([] without
              --attack), privacy: null without privacy, else {epsilon, delta, target_epsilon,
              rounds_charged, refused: why the budget refused the next round, or null}, final: {...}}
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedge.tools.beside_json import png_metadata
from fedge.tools.plots import pyplot

HEADER = (f"{'round':>5} {'loss':>7} {'ev.loss':>7} {'global':>7} {'pers.mean':>9} {'pers.min':>8} {'up KiB':>8} "
          f"{'dense KiB':>9} {'down KiB':>8} {'sec':>6}")


def _pct(v, width: int = 7) -> str:
    return f"{'-':^{width}}" if v is None else f"{v:{width}.3f}"


def _loss(v) -> str:
    return "   -   " if v is None else f"{v:7.4f}" if v < 100 else f"{v:7.1e}"


def format_row(row: dict) -> str:
    return (
        f"{row['round']:>5} {_loss(row.get('train_loss'))} {_loss(row.get('global_loss'))} "
        f"{_pct(row['global_accuracy'])} "
        f"{_pct(row['personalized_accuracy_mean'], 9)} "
        f"{_pct(row['personalized_accuracy_min'], 8)} "
        f"{row['bytes_up'] / 1024:8.1f} {row['bytes_up_dense'] / 1024:9.1f} "
        f"{row['bytes_down'] / 1024:8.1f} {row['seconds']:6.2f}" + ("" if row["committed"] else "  (abandoned)")
        + ("" if row.get("epsilon") is None else f"  ε={row['epsilon']:.3f}")
    )


def failure_cause(result) -> str | None:
    """Why no round committed, in one line; None when one did."""
    if any(r["committed"] for r in result.rounds):
        return None
    s = result.summary
    parts = [f"no round committed in {len(result.rounds)}"]
    if s.get("abandoned"):
        parts.append("abandoned: " + "; ".join(f"{why} (x{n})" for why, n in s["abandoned"].items()))
    if s.get("declines"):
        details = s.get("decline_details", {})
        parts.append("declines: " + "; ".join(f"{reason} x{n}"
                                             + (f" ({details[reason]})" if details.get(reason) else "")
                                             for reason, n in sorted(s["declines"].items(), key=lambda kv: -kv[1])))
    if s.get("rejections"):
        parts.append("rejected updates: " + ", ".join(f"{r} x{n}" for r, n in s["rejections"].items()))
    if (s.get("privacy") or {}).get("refused"):
        parts.append(s["privacy"]["refused"])
    return "; ".join(parts[:1]) + " rounds: " + "; ".join(parts[1:]) if len(parts) > 1 else parts[0] + " rounds"


def constant_guess(result) -> str | None:
    """A run that committed rounds but whose global model does no better than always predicting
    the most common test label, in one line; None otherwise. Digits with features 0..8 once
    trained to exactly that (every ReLU dead, accuracy 0.087) and the run looked like a success."""
    final = result.summary.get("final") or {}
    accuracy, share = final.get("final_global_accuracy"), result.config.get("data", {}).get("most_common_test_share")
    if not any(r["committed"] for r in result.rounds) or not _no_better_than_guess(accuracy, share):
        return None
    # a run whose devices standardized their features (--standardize, or auto) is not told to
    remedy = ("lower --lr (each device standardized its features already)" if result.config.get("standardize") else
              "standardize the features (--standardize, or (x - mean) / std) or lower --lr")
    skewed = result.config.get("data", {}).get("devices_missing_labels") or 0
    if result.config.get("standardize") and skewed and result.config.get("standardize_with") == "device":
        # Breast cancer over 10 files, Dirichlet 0.1, seed 3: 0.619 / 0.602 / 0.593 global at --lr 0.02 /
        # 0.005 / 0.001, and 0.947 with the same files standardized once over the pool.
        remedy = (f"the cause is likely each device standardizing its features with its own mean and std while "
                  f"{skewed} of {result.config['data'].get('devices', skewed)} devices train on fewer labels than "
                  f"the fleet: that centres every device's features on 0, whatever its labels, and a lower --lr "
                  f"does not bring back what told the labels apart. Standardize with the fleet's pooled mean and "
                  f"std (--standardize-with fleet, the default without privacy or secure aggregation), or once "
                  f"with the whole population's (or a proxy set's) before saving; auto then keeps them as saved")
    return (f"the global model's accuracy {accuracy:.3f} is no better than always predicting the most common "
            f"label ({share:.3f}): it learned nothing the fleet shares. If that is unexpected, {remedy}")


def _no_better_than_guess(accuracy: float | None, share: float | None) -> bool:
    """Within a point of always predicting the most common test label (`share`), on test data
    of more than one label (a test set of one label leaves nothing to learn)."""
    return accuracy is not None and share is not None and accuracy <= share + 0.01 and share <= 0.99


def summarize(result) -> dict:
    if not result.rounds:  # the privacy budget refused the first round
        return {}
    last = result.rounds[-1]
    up = sum(r["bytes_up"] for r in result.rounds)
    dense = sum(r["bytes_up_dense"] for r in result.rounds)
    return {
        "final_global_accuracy": last["global_accuracy"],
        "final_personalized_accuracy_mean": last["personalized_accuracy_mean"],
        "final_personalized_accuracy_min": last["personalized_accuracy_min"],
        "total_bytes_up": up,
        "total_bytes_up_dense": dense,
        "uplink_compression": dense / up if up else None,
        "total_seconds": sum(r["seconds"] for r in result.rounds),
    }


def format_summary(result) -> str:
    s = result.summary["final"]
    p = result.summary.get("privacy")
    privacy = [] if not p else [f"privacy: ε {p['epsilon']:.3f} of {p['target_epsilon']:g} (δ={p['delta']:g}) "
                                f"over {p['rounds_charged']} rounds"
                                + (f"; stopped: {p['refused']}" if p["refused"] else "")]
    if not s:
        return "\n".join(["no round ran", *privacy])
    lines = [
        f"final: global {_pct(s['final_global_accuracy']).strip()} (the shared model on every device's held-out "
        f"data, from the coordinator's federated evaluation), personalized mean "
        f"{_pct(s['final_personalized_accuracy_mean'], 0)} (each device's own model on its own data; worst device "
        f"{_pct(s['final_personalized_accuracy_min'], 0)})",
        f"uplink: {s['total_bytes_up'] / 1024:.1f} KiB on the wire vs {s['total_bytes_up_dense'] / 1024:.1f} KiB dense "
        f"fp32 ({s['uplink_compression']:.2f}x)" if s["uplink_compression"] else "uplink: nothing sent",
    ]
    b = result.baselines
    if "local_only" in b:  # what federating buys a device over training alone
        lines.append(f"baseline local-only (each device trains alone on its own data, {b['local_only']['epochs']} "
                     f"epochs, nothing shared): mean {b['local_only']['accuracy_mean']:.3f}, worst "
                     f"{b['local_only']['accuracy_min']:.3f}")
        if b["local_only"].get("unstable"):
            lines.append(f"note: {len(b['local_only']['unstable'])} device(s) ended training alone well above their "
                         f"best epoch's loss (unstable at this lr): {', '.join(b['local_only']['unstable'][:5])}")
        alone, together = b["local_only"]["accuracy_mean"], s["final_personalized_accuracy_mean"]
        # say what the comparison means rather than leave it to be misread
        if together is not None and alone >= together:
            lines.append(f"note: training alone matched or beat the federated personalized model here ({alone:.3f} vs "
                         f"{together:.3f}): a device is scored on held-out data from its own distribution, which it "
                         f"can often learn alone; what federation adds shows in the global model and for devices "
                         f"with little data or new classes")
    if "central" in b:  # the ceiling federation approaches without moving the data
        lines.append(f"baseline centralized (one model trained on all devices' data pooled in one place, "
                     f"{b['central']['epochs']} epochs; the data never moves in fedge): "
                     f"{b['central']['accuracy']:.3f}")
        share = result.config.get("data", {}).get("most_common_test_share")  # of the same union of test splits
        if _no_better_than_guess(b["central"]["accuracy"], share):  # collapsed: its loss need not rise at the end
            lines.append(f"warning: the centralized baseline's accuracy {b['central']['accuracy']:.3f} is no better "
                         f"than always predicting the most common label ({share:.3f}): its training collapsed at "
                         f"this lr and momentum, so its accuracy is no ceiling (standardized features or a lower "
                         f"--lr steady it)")
        elif b["central"].get("unstable"):  # a spike it did not recover from: not a ceiling
            losses = b["central"]["epoch_losses"]
            lines.append(f"warning: the centralized baseline's last epoch ended at loss {losses[-1]:.3g}, its best "
                         f"{min(losses):.3g}: its training was unstable at this lr and momentum, so its accuracy "
                         f"is no ceiling (a lower --lr or fewer --central-epochs steadies it)")
    n = result.new_devices
    if n:
        tuned = (f"; after {n['steps']} local head steps mean {n['tuned_accuracy_mean']:.3f}, worst "
                 f"{n['tuned_accuracy_min']:.3f}" if n["tuned_accuracy_mean"] is not None else "")
        scored = f", {n['evaluated']} with test examples" if n["evaluated"] < n["count"] else ""
        lines.append(f"new devices ({n['count']}, never trained{scored}): global model mean "
                     f"{n['global_accuracy_mean']:.3f}, worst {n['global_accuracy_min']:.3f}{tuned}")
    if result.summary.get("rejections"):  # stale_round after early closes is normal with over-selection
        lines.append("messages refused: " + ", ".join(f"{reason} x{n}" for reason, n in
                                                       sorted(result.summary["rejections"].items())))
    return "\n".join(lines + privacy)


def write_json(result, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": 1, **asdict(result)}
    path.write_text(json.dumps(doc, indent=2, default=_jsonable))


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value)}")


def _plot_title(result) -> str:
    """What ran, in one line: model, data, split, fleet and what the coordinator did."""
    c = result.config
    co = c.get("coordinator", {})
    split = c.get("partition")
    split = {"dirichlet": f"Dirichlet α={c.get('alpha')}", "shards": f"{c.get('classes_per_client')} classes/device",
             "files": "per-device files"}.get(split, split)
    return (f"{result.model['name']} on {c.get('dataset')} ({split}), {c.get('devices')} devices, "
            f"{co.get('clients_per_round')}/round, {len(result.rounds)} rounds, {co.get('strategy')} + "
            f"{co.get('aggregator')}, {c.get('personalization')}, "
            f"{co.get('compression', {}).get('quant_bits')}-bit updates")


def write_plot(result, path: str | Path) -> Path | None:
    """Accuracy per round (with baselines), cumulative uplink bytes, and with privacy accuracy
    against ε; None without matplotlib or rounds."""
    if not result.rounds:
        return None
    plt = pyplot()
    if plt is None:
        return None
    rounds = [r["round"] for r in result.rounds]
    private = result.rounds[0].get("epsilon") is not None
    fig, (ax1, ax2, *ax3) = plt.subplots(1, 3 if private else 2, figsize=(16 if private else 11, 4))
    if result.rounds[0]["global_accuracy"] is not None:
        ax1.plot(rounds, [r["global_accuracy"] for r in result.rounds], label="global model", marker=".")
    ax1.plot(rounds, [r["personalized_accuracy_mean"] for r in result.rounds], label="personalized (mean)", marker=".")
    ax1.plot(rounds, [r["personalized_accuracy_min"] for r in result.rounds], label="personalized (worst)", ls=":")
    b = result.baselines
    if "local_only" in b:
        ax1.axhline(b["local_only"]["accuracy_mean"], color="grey", ls="--", label="local-only (mean)")
    if "central" in b:
        ax1.axhline(b["central"]["accuracy"], color="black", ls="--", label="centralized")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set(xlabel="round", ylabel="accuracy (held-out)", ylim=(0, 1), title="accuracy")
    fig.suptitle(_plot_title(result), fontsize=9)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)
    for key, label, style in (("bytes_up", "uplink, on the wire", "-"), ("bytes_up_dense", "uplink, dense fp32", "--"),
                              ("bytes_down", "downlink (tasks, model)", "-"),
                              ("bytes_eval_down", "evaluation, down", ":"), ("bytes_eval_up", "evaluation, up", ":")):
        totals = np.cumsum([r.get(key, 0) for r in result.rounds]) / 1024
        if totals[-1]:
            ax2.plot(rounds, totals, label=label, ls=style)
    ax2.set(xlabel="round", ylabel="KiB (cumulative)", title="communication")
    if ax2.get_legend_handles_labels()[0]:  # no traffic at all (an empty Poisson draw): no legend to draw
        ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    if private:
        eps = [r["epsilon"] for r in result.rounds]
        if result.rounds[0]["global_accuracy"] is not None:
            ax3[0].plot(eps, [r["global_accuracy"] for r in result.rounds], label="global model", marker=".")
        ax3[0].plot(eps, [r["personalized_accuracy_mean"] for r in result.rounds], label="personalized (mean)",
                    marker=".")
        ax3[0].set(xlabel="ε spent (user-level)", ylabel="accuracy", ylim=(0, 1), title="accuracy against ε")
        ax3[0].legend(loc="lower right", fontsize=8)
        ax3[0].grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=png_metadata("simulate"))
    plt.close(fig)
    return path
