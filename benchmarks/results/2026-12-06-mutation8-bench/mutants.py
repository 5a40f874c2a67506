"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T = "tests/tools/"


def _tests(*names: str) -> str:
    return " ".join(_T + name + ".py" for name in names)


_HET = _tests("test_heterogeneity") + " " + _T + "test_auto_standardize.py::" \
    "test_the_heterogeneity_json_records_what_auto_decided_for_its_data_folder"
GROUPS = {
    "HM": _HET,
    "HE": _HET,
    "HG": _HET + " " + _tests("test_sim_config"),
    "HR": _HET + " " + _T + "test_output_folders.py::"
    "test_the_heterogeneity_report_folder_is_checked_before_the_grid_runs",
    "PR": _tests("test_bench_privacy", "test_beside_json", "test_cli_fuzz"),
    "SC": _tests("test_simulate_scale", "test_cli_fuzz"),
    "SR": _tests("test_bench_screening"),
    "LS": _tests("test_bench_privacy", "test_bench_async"),
    "IN": _tests("test_bench_ingest", "test_cli_fuzz"),
    "SA": "tests/secagg/test_bench_secagg.py",
}
_B = "tools/bench/"
HM, HE, HG, HR, PR, SC, SR, LS, IP, IN, DW, SA = (_B + n + ".py" for n in (
    "hetero_metrics", "heterogeneity", "hetero_grid", "hetero_report", "privacy", "scale", "screening", "label_skew",
    "ingest_path", "ingest", "device_writes", "secagg"))
MUTANTS = [
    # hetero_metrics.py: rounds to target, final accuracy, bytes to a level, multipliers, the four targets
    ("hm-rtt-gt", HM, "if acc is not None and acc >= target:", "if acc is not None and acc > target:", "HM"),
    ("hm-rtt-zero-based", HM, "            return i + 1\n", "            return i\n", "HM"),
    ("hm-final-none-counted", HM, "return sum(values) / len(values) if values else None",
     "return sum(values) / len(curve[-window:]) if values else None", "HM"),
    ("hm-bytes-before-add", HM, "        sent += up\n        if acc >= level:\n            return sent\n",
     "        if acc >= level:\n            return sent\n        sent += up\n", "HM"),
    ("hm-bytes-gt", HM, "        if acc >= level:\n", "        if acc > level:\n", "HM"),
    ("hm-mult-inverted", HM, "return rounds / iid_rounds", "return iid_rounds / rounds", "HM"),
    ("hm-mult-iid-pers-ignored", HM,
     '        key = (c["dataset"], c["algorithm"], c["personalization"])\n        if c["partition"] == IID',
     '        key = (c["dataset"], c["algorithm"], False)\n        if c["partition"] == IID', "HM"),
    ("hm-shards-limit-lt", HM, 'met = best["multiplier"] <= limit', 'met = best["multiplier"] < limit', "HM"),
    ("hm-pers-local-gt", HM, '"vs_local": pm >= local + 0.02', '"vs_local": pm > local + 0.02', "HM"),
    ("hm-pers-worst-gt", HM, '"worst": pmin >= 0.85', '"worst": pmin > 0.85', "HM"),
    ("hm-pers-none-mode-counted", HM, ' and r["mode"] != "none"]', "]", "HM"),
    ("hm-local-all-devices", HM, 'local = _local_mean(base["local_only"], c["devices"])',
     'local = _local_mean(base["local_only"], None)', "HM"),
    ("hm-tail-gt", HM, "p10 >= level, detail", "p10 > level, detail", "HM"),
    ("hm-comp-ratio-gt", HM, 'r["ratio_vs_dense"] >= min_ratio and', 'r["ratio_vs_dense"] > min_ratio and', "HM"),
    ("hm-comp-drop-gt", HM, 'and r["accuracy_delta_vs_dense"] >= -max_drop]',
     'and r["accuracy_delta_vs_dense"] > -max_drop]', "HM"),
    ("hm-comp-no-ef-counted", HM, ' and r["error_feedback"]\n', "\n", "HM"),
    ("hm-upload-level-max", HM, "level = min(fa, ff)", "level = max(fa, ff)", "HM"),
    # heterogeneity.py: the 0.95 x central target, compression ratios and deltas
    ("he-target-central", HE, '"target_accuracy": grid.target_fraction * r["central"]["accuracy"]',
     '"target_accuracy": r["central"]["accuracy"]', "HE"),
    ("he-ratio-inverted", HE, 'dense["bytes_up_per_round"] / r["bytes_up_per_round"] if dense',
     'r["bytes_up_per_round"] / dense["bytes_up_per_round"] if dense', "HE"),
    ("he-delta-sign", HE, "acc - dense_acc if dense", "dense_acc - acc if dense", "HE"),
    ("he-dense-no-ef-first", HE, 'r["setting"] == "dense-fp32" and r["error_feedback"]), None)',
     'r["setting"] == "dense-fp32" and not r["error_feedback"]), None)', "HE"),
    # hetero_grid.py: which cells run
    ("hg-devices-lt3", HG, "self.devices < 2 or", "self.devices < 3 or", "HG"),
    ("hg-pretrained-compression-unchecked", HG,
     "        unknown += [c for c in self.pretrained_compression if c not in COMPRESSION]\n", "", "HG"),
    ("hg-ef-only", HG, "for feedback in (True, False):", "for feedback in (True,):", "HG"),
    ("hg-pretrained-no-ef", HG, "topk_fraction=topk, error_feedback=True)", "topk_fraction=topk, error_feedback=False)",
     "HG"),
    ("hg-modes-no-new-devices", HG, "new_devices=grid.new_devices)", "new_devices=0)", "HG"),
    # hetero_report.py
    ("hr-never-bound-inverted", HR, "never (> {rounds / r['iid_rounds_to_target']:.2f}x)",
     "never (> {r['iid_rounds_to_target'] / rounds:.2f}x)", "HR"),
    ("hr-kib-1000", HR, 'return "–" if v is None else f"{v / 1024:.1f}"',
     'return "–" if v is None else f"{v / 1000:.1f}"', "HR"),
    # privacy.py: epsilon per run, smallest devices, bytes_up
    ("pr-delta-le1", PR, "if not 0 < self.delta < 1:", "if not 0 < self.delta <= 1:", "PR"),
    ("pr-bytes-up-last", PR, '"bytes_up": sum(r["bytes_up"] for r in result.rounds)',
     '"bytes_up": result.rounds[-1]["bytes_up"]', "PR"),
    ("pr-committed-all", PR, '"rounds_committed": sum(bool(r["committed"]) for r in result.rounds)',
     '"rounds_committed": len(result.rounds)', "PR"),
    ("pr-spent-first-round", PR, '"epsilon_spent": last.get("epsilon")',
     '"epsilon_spent": result.rounds[0].get("epsilon")', "PR"),
    ("pr-distributed-poisson", PR, 'sampling = "fixed" if distributed else grid.sampling', "sampling = grid.sampling",
     "PR"),
    ("pr-smallest-dropped", PR, "            **{k: last[k] for k in SMALLEST if k in last},\n", "", "PR"),
    # scale.py: peak RSS against the 2 GB target
    ("sc-within-lt", SC, 'row["peak_rss_bytes"] <= TARGET_PEAK_RSS_BYTES',
     'row["peak_rss_bytes"] < TARGET_PEAK_RSS_BYTES', "SC"),
    ("sc-kb-1000", SC, "int(line.split()[1]) * 1024", "int(line.split()[1]) * 1000", "SC"),
    # screening.py
    ("sr-flipped-le", SR, "sign = -1.0 if i < bad else 1.0", "sign = -1.0 if i <= bad else 1.0", "SR"),
    ("sr-bad-floor", SR, "bad = round(flipped * k)", "bad = int(flipped * k)", "SR"),
    # label_skew.py
    ("ls-held-fifth", LS, "held = max(1, min_examples // 4)", "held = max(1, min_examples // 5)", "LS"),
    ("ls-no-min-clip", LS, "size=devices).astype(int), min_examples, max_examples)",
     "size=devices).astype(int), 1, max_examples)", "LS"),
    # ingest_path.py / ingest.py / device_writes.py: rates and the drain ratio, writes per task
    ("ip-median-min", IP, '"aggregate_bytes_per_second": total / statistics.median(paths)',
     '"aggregate_bytes_per_second": total / min(paths)', "IN"),
    ("ip-stages-swapped", IP, "(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)",
     "(t1 - t0, t3 - t2, t2 - t1, t4 - t3, t5 - t4)", "IN"),
    ("in-ratio-inverted", IN, '"drain_ratio": round(coord_rate / raw_rate, 3)',
     '"drain_ratio": round(raw_rate / coord_rate, 3)', "IN"),
    ("dw-before-ignored", DW, "(after[kind] - before[kind]) / tasks", "after[kind] / tasks", "IN"),
    # secagg.py
    ("sa-floor-floor", SA, "floor = math.ceil(d * m / 8)", "floor = d * m // 8", "SA"),
    ("sa-dropped-floor", SA, "size=int(round(dropout * n))", "size=int(dropout * n)", "SA"),
]
AFTER = {
    **dict.fromkeys(["hm-final-none-counted", "hm-pers-local-gt", "hm-pers-none-mode-counted", "hm-tail-gt",
                     "hm-comp-ratio-gt", "hm-comp-drop-gt", "hm-comp-no-ef-counted"],
                    _tests("test_hetero_metrics_edges")),
    **dict.fromkeys(["he-delta-sign", "he-dense-no-ef-first"], _tests("test_hetero_compression_rows")),
    **dict.fromkeys(["hg-devices-lt3", "hg-pretrained-compression-unchecked", "hg-pretrained-no-ef"],
                    _tests("test_hetero_grid_edges")),
    **dict.fromkeys(["hr-never-bound-inverted", "hr-kib-1000"], _tests("test_hetero_report_numbers")),
    **dict.fromkeys(["pr-delta-le1", "pr-bytes-up-last", "pr-committed-all", "pr-distributed-poisson"],
                    _tests("test_bench_privacy_rows")),
    **dict.fromkeys(["sc-within-lt", "sc-kb-1000"], _tests("test_bench_scale_edges")),
    **dict.fromkeys(["sr-flipped-le", "sr-bad-floor"], _tests("test_bench_screening_round")),
    "ls-held-fifth": _tests("test_label_skew_edges"),
    **dict.fromkeys(["ip-median-min", "ip-stages-swapped", "in-ratio-inverted"],
                    _tests("test_bench_ingest_arithmetic")),
    **dict.fromkeys(["sa-floor-floor", "sa-dropped-floor"], "tests/secagg/test_bench_secagg_edges.py"),
}
