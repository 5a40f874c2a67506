"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_SIGN = (
    "tests/coordinator/test_sign_split.py "
    "tests/coordinator/test_sign_split_rounds.py "
    "tests/coordinator/test_sign_split_async.py "
    "tests/coordinator/test_sharding_sign_split.py "
)
GROUPS = {
    "SP": _SIGN + "tests/tools/test_bench_robustness.py",
    "SC": (
        _SIGN + "tests/coordinator/test_screening.py "
        "tests/coordinator/test_async_clip.py "
        "tests/coordinator/test_robust_aggregators.py "
        "tests/coordinator/test_exclusion_log.py "
        "tests/coordinator/test_left_out_log.py "
        "tests/coordinator/test_weight_cut_log.py "
        "tests/coordinator/test_device_clip.py"
    ),
    "AG": (
        _SIGN + "tests/coordinator/test_robust_aggregators.py "
        "tests/coordinator/test_robust.py "
        "tests/coordinator/test_robust_restart.py "
        "tests/coordinator/test_async_clip.py "
        "tests/coordinator/test_screening.py"
    ),
    "RB": (
        "tests/tools/test_bench_robustness.py "
        "tests/tools/test_bench_robustness_tail.py "
        "tests/tools/test_cli_inputs.py"
    ),
}
SP, SC, AG = (
    "coordinator/robust/sign_split.py",
    "coordinator/robust/screened.py",
    "coordinator/robust/aggregators.py",
)
RR, RB = "tools/bench/robustness_report.py", "tools/bench/robustness.py"
MUTANTS = [
    # sign_split.py: the config's bounds
    ("sp-gap-gt0", SP, "and self.gap >= 0):", "and self.gap > 0):", "SP"),
    ("sp-share-lt1", SP, "0 < self.share <= 1):", "0 < self.share < 1):", "SP"),
    ("sp-min3-4", SP, "or not 3 <= self.min_inputs", "or not 4 <= self.min_inputs", "SP"),
    ("sp-maxfleet-lt", SP, "self.min_inputs <= MAX_FLEET):", "self.min_inputs < MAX_FLEET):", "SP"),
    ("sp-rclip-gt1", SP, "or self.round_clip >= 1)):", "or self.round_clip > 1)):", "SP"),
    ("sp-min-inputs-5", SP, "MIN_INPUTS = 4", "MIN_INPUTS = 5", "SP"),
    # the features and 2-means
    ("sp-cols-no-floor", SP, "size=max(1, int(share * d))", "size=int(share * d)", "SP"),
    ("sp-cols-replace", SP, "replace=False)", "replace=True)", "SP"),
    ("sp-neg-le", SP, "(s < 0).mean(1)", "(s <= 0).mean(1)", "SP"),
    ("sp-iters-1", SP, "iters: int = 20", "iters: int = 1", "SP"),
    ("sp-no-break", SP, "if labels is not None and np.array_equal(fresh, labels):", "if False:", "SP"),
    ("sp-tie-second", SP, ".sum(-1).argmin(1)", ".sum(-1)[:, ::-1].argmin(1) * -1 + 1", "SP"),
    ("sp-last-pair", SP, "np.unravel_index(np.argmax(d2), d2.shape)",
     "np.unravel_index(d2.size - 1 - np.argmax(d2.ravel()[::-1]), d2.shape)", "SP"),
    # the gate
    ("sp-gap-ge", SP, "> gap * spread)", ">= gap * spread)", "SP"),
    ("sp-spread-no-sqrt", SP, "spread = math.sqrt(float(((f - centres[labels]) ** 2).sum(1).mean()))",
     "spread = float(((f - centres[labels]) ** 2).sum(1).mean())", "SP"),
    ("sp-spread-mean-dist", SP, "spread = math.sqrt(float(((f - centres[labels]) ** 2).sum(1).mean()))",
     "spread = float(np.sqrt(((f - centres[labels]) ** 2).sum(1)).mean())", "SP"),
    ("sp-k-le", SP, "if k < min_inputs or", "if k <= min_inputs or", "SP"),
    ("sp-no-ptp", SP, "if k < min_inputs or np.ptp(feats, axis=0).max() == 0:", "if k < min_inputs:", "SP"),
    ("sp-half-gt", SP, "if 2 * sizes.min() >= k or", "if 2 * sizes.min() > k or", "SP"),
    ("sp-keep-smaller", SP, "return labels == sizes.argmax()", "return labels == sizes.argmin()", "SP"),
    ("sp-keep-gap-ge0", SP, "if not (math.isfinite(gap) and gap > 0):", "if not (math.isfinite(gap) and gap >= 0):",
     "SP"),
    # clip_to_median
    ("sp-clip-mean", SP, "bound = multiple * float(np.median(norms))", "bound = multiple * float(np.mean(norms))",
     "SP"),
    ("sp-clip-zero", SP, "bound if bound > 0 else math.inf", "bound", "SP"),
    # screened.py
    ("sc-inside-lt", SC, "inside = norms <= exclusion *", "inside = norms < exclusion *", "SC"),
    ("sc-no-stale-all", SC, "if not inside.any():  # every", "if False:  # every", "SC"),
    ("sc-no-cap", SC, "weights = np.minimum(np.array(self.claims)[inside], cap)",
     "weights = np.array(self.claims)[inside]", "SC"),
    ("sc-claim-mean", SC, "else float(np.median(self.claims))", "else float(np.mean(self.claims))", "SC"),
    ("sc-limits-max", SC, "max(self.task_clip, self.history_exclusion)", "self.history_exclusion", "SC"),
    ("sc-task-clip-0", SC, "if 0 < self.history_bound < math.inf", "if self.history_bound < math.inf", "SC"),
    ("sc-split-ids", SC, "self.sign_split_ids = [i for i, kept in zip(ids, keep)",
     "self.sign_split_ids = [i for i, kept in zip(self.ids, keep)", "SC"),
    ("sc-rclip-always", SC, "if self.sign.round_clip:", "if True:", "SC"),
    ("sc-rclip-never", SC, "if self.sign.round_clip:", "if False:", "SC"),
    ("sc-weight-then-clip", SC, "rows = clip_to_median(rows, self.sign.round_clip)",
     "rows, factors = clip_to_median(rows * factors[:, None], self.sign.round_clip), factors * 0 + 1", "SC"),
    ("sc-no-factors", SC, "if (factors != 1).any():", "if False:", "SC"),
    ("sc-factors-unmasked", SC, "            factors = factors[keep]\n", "", "SC"),
    ("sc-no-note-cuts", SC, "        self._note_cuts(cap)\n        norms", "        norms", "SC"),
    # aggregators.py: reduce once per count, the staleness factor's range
    ("ag-reduce-always", AG, "if self._reduced_at != self.count:", "if True:", "AG"),
    ("ag-reduce-once-ever", AG, "if self._reduced_at != self.count:", "if self._reduced_at < 0:", "AG"),
    ("ag-factor-lt1", AG, "if not 0 < factor <= 1:", "if not 0 < factor < 1:", "AG"),
    ("ag-factor-ge0", AG, "if not 0 < factor <= 1:", "if not 0 <= factor <= 1:", "AG"),
    # robustness_report.py / robustness.py: the tail window, the checks, the verdicts
    ("rr-window-floor", RR, "return max(3, -(-rounds // 5))", "return max(3, rounds // 5)", "RB"),
    ("rr-window-2", RR, "return max(3, -(-rounds // 5))", "return max(2, -(-rounds // 5))", "RB"),
    ("rr-window-4", RR, "return max(3, -(-rounds // 5))", "return max(3, -(-rounds // 4))", "RB"),
    ("rr-null-window", RR, "known = [v for v in curve[-tail_window(rounds):] if v is not None]",
     "known = [v for v in curve if v is not None][-tail_window(rounds):]", "RB"),
    ("rr-score-bool", RR, "and not isinstance(v, bool) and", "and", "RB"),
    ("rr-score-finite", RR, " and math.isfinite(v)", "", "RB"),
    ("rr-recorded-null", RR, 'if cell["tail_accuracy"] is not None and not _score(',
     'if not _score(', "RB"),
    ("rr-curve-first", RR, 'if "tail_accuracy" in cell:',
     'if "tail_accuracy" in cell and "accuracy_curve" not in cell:', "RB"),
    ("rr-rounds-bool", RR, 'type(grid.get("rounds")) is int', 'isinstance(grid.get("rounds"), int)', "RB"),
    ("rr-cells-dict", RR, "\n            and all(isinstance(c, dict) for c in cells)", "", "RB"),
    ("rr-tail-na-all", RR, 'if any(c["tail_accuracy"] is None for c in cells):',
     'if all(c["tail_accuracy"] is None for c in cells):', "RB"),
    ("rr-worst-max", RR, "worst = min(ours, key=lambda c: c[figure])", "worst = max(ours, key=lambda c: c[figure])",
     "RB"),
    ("rr-clean-sign", RR, "100 * (cell(CLEAN, default)[figure] - clean[figure])",
     "100 * (clean[figure] - cell(CLEAN, default)[figure])", "RB"),
    ("rr-tail-on-final", RR, 'summary(cells, "tail_accuracy")', "summary(cells)", "RB"),
    ("rb-no-check-cells", RB, "        check_cells(doc)  #", "        pass  #", "RB"),
    ("rb-no-unicode", RB, "except (OSError, ValueError, UnicodeDecodeError) as exc:",
     "except (OSError, ValueError) as exc:", "RB"),
    ("rb-no-oserror", RB, "except (OSError, ValueError, UnicodeDecodeError) as exc:",
     "except (ValueError, UnicodeDecodeError) as exc:", "RB"),
]

E, AGT, TAIL = (
    "tests/coordinator/test_sign_split_edges.py",
    "tests/coordinator/test_robust_aggregators.py",
    "tests/tools/test_bench_robustness_tail.py",
)
AFTER = {
    "sp-maxfleet-lt": E,
    "sp-cols-no-floor": E,
    "sp-no-break": E,
    "sp-gap-ge": E,
    "sp-no-ptp": E,
    "sc-inside-lt": E,
    "sc-no-stale-all": E,
    "sc-claim-mean": E,
    "sc-limits-max": E,
    "sc-task-clip-0": E,
    "sc-split-ids": E,
    "sc-rclip-always": E,
    "ag-reduce-once-ever": AGT,
    "rr-recorded-null": TAIL,
    "rr-rounds-bool": TAIL,
    "rr-tail-na-all": TAIL,
    "rb-no-unicode": TAIL,
    "rb-no-oserror": TAIL,
}
