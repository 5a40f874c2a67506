"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T = "tests/tools/"
GROUPS = {
    "BENCH": _T + "test_bench_async.py",
    "BENCHCLI": _T + "test_bench_async.py " + _T + "test_beside_json.py",
    "PA": _T + "test_partition.py",
    "SY": (
        _T
        + "test_bench_privacy.py "
        + _T
        + "test_simulate_scale.py "
        + _T
        + "test_cli_fuzz.py::test_a_negative_zero_alpha_is_zero"
    ),
    "AT": _T + "test_attacks.py " + _T + "test_simulate_attacks.py " + _T + "test_adversary.py",
}
VF, AR, AB = "tools/bench/virtual_fleet.py", "tools/bench/async_runs.py", "tools/bench/async_bench.py"
PA, SY, AT = "tools/partition.py", "tools/synthetic.py", "tools/simulate/attacks.py"
MUTANTS = [
    # virtual_fleet.py: compute speed and its slow tail, link rates, windows, losses
    ("vf-no-slow-tail", VF, "np.where(self.slow, model.slow_factor, 1.0)", "np.where(self.slow, 1.0, 1.0)", "BENCH"),
    ("vf-up-median-is-down", VF, "self.up_rate = model.up_bytes_per_s *", "self.up_rate = model.down_bytes_per_s *",
     "BENCH"),
    ("vf-window-end-inside", VF, "start <= phase < end", "start <= phase <= end", "BENCH"),
    ("vf-hot-ignored", VF, "\\\n            and not _inside(trace.hot_s, trace.period_s, local)", "", "BENCH"),
    ("vf-no-dropout", VF, "if rng.random() < self.dropout[device]:", "if rng.random() < 0.0:", "BENCH"),
    ("vf-no-end-check", VF, "np.append(np.arange(start, start + seconds, CHECK_S), start + seconds)",
     "np.arange(start, start + seconds, CHECK_S)", "BENCH"),
    ("vf-check-2min", VF, "CHECK_S = 60.0", "CHECK_S = 120.0", "BENCH"),
    # async_runs.py: the sync round (deadline, quorum, close, bytes) and the async driver
    ("ar-deadline-p10", AR, "task.bytes_up), cfg.deadline_quantile))", "task.bytes_up), 1 - cfg.deadline_quantile))",
     "BENCH"),
    ("ar-quorum-floor", AR, "quorum = max(1, -(-cfg.clients_per_round // 2))",
     "quorum = max(1, cfg.clients_per_round // 2)", "BENCH"),
    ("ar-deadline-counts-upload", AR, "or down + compute > deadline:", "or down + compute + up > deadline:", "BENCH"),
    ("ar-deadline-ge", AR, "or down + compute > deadline:", "or down + compute >= deadline:", "BENCH"),
    ("ar-report-at-close-dropped", AR, "if t <= close][:cfg.clients_per_round]",
     "if t < close][:cfg.clients_per_round]", "BENCH"),
    ("ar-late-bytes-uncounted", AR, "bytes_up += task.bytes_up * len(finishes)",
     "bytes_up += task.bytes_up * len(reports)", "BENCH"),
    ("ar-commit-quorum-gt", AR, "        if len(trained) >= quorum:", "        if len(trained) > quorum:", "BENCH"),
    ("ar-unweighted-mean", AR, "weights = [float(len(task.clients[d].y_train)) for _, d in trained]",
     "weights = [1.0 for _, d in trained]", "BENCH"),
    ("ar-round-lasts-deadline", AR, "        now = close\n", "        now = now + deadline\n", "BENCH"),
    ("ar-no-over-selection", AR, "selection_size(cfg.clients_per_round, cfg.over_selection,",
     "selection_size(cfg.clients_per_round, 1.0,", "BENCH"),
    ("ar-async-deadline-sync", AR, "task_deadline = cfg.async_deadline_factor * sync_deadline",
     "task_deadline = sync_deadline", "BENCH"),
    ("ar-async-staleness-zero", AR, "float(len(task.clients[d].y_train)), actions[0].staleness))",
     "float(len(task.clients[d].y_train)), 0))", "BENCH"),
    ("ar-target-strict", AR, "        if acc >= target:", "        if acc > target:", "BENCH"),
    # async_bench.py: the target, speedup and bytes ratio, --quick
    ("ab-speedup-inverted", AB, 'doc["speedup"] = s["time_to_target_seconds"] / a["time_to_target_seconds"]',
     'doc["speedup"] = a["time_to_target_seconds"] / s["time_to_target_seconds"]', "BENCHCLI"),
    ("ab-bytes-ratio-inverted", AB, 'doc["bytes_ratio"] = a["bytes_up"] / s["bytes_up"]',
     'doc["bytes_ratio"] = s["bytes_up"] / a["bytes_up"]', "BENCHCLI"),
    ("ab-quick-16-rounds", AB, "concurrency=20, rounds=15), 200", "concurrency=20, rounds=16), 200", "BENCHCLI"),
    # partition.py: Dirichlet's min size and fallback, per-client limit, shards' limits, quantity's floor
    ("pa-min-size-fifth", PA, "return min(min_size, max(2, n // (10 * num_clients)))",
     "return min(min_size, max(2, n // (5 * num_clients)))", "PA"),
    ("pa-draw-fits-gt", PA, "if sizes.min() >= need:", "if sizes.min() > need:", "PA"),
    ("pa-per-client-limit-ge", PA, "if min_size > n // num_clients:", "if min_size >= n // num_clients:", "PA"),
    ("pa-shards-total-ge", PA, "    if total > n:", "    if total >= n:", "PA"),
    ("pa-shards-fallback-le", PA, "if total < len(labels):", "if total <= len(labels):", "PA"),
    ("pa-shards-caps-le", PA, "if caps.sum() < total:", "if caps.sum() <= total:", "PA"),
    ("pa-quantity-floor-minus1", PA, "floor = min(min_size, n // num_clients)",
     "floor = min(min_size - 1, n // num_clients)", "PA"),
    # synthetic.py against the paper's generative formulas
    ("sy-alpha-beta-swapped", SY, "rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))",
     "rng.normal(0, np.sqrt(beta)), rng.normal(0, np.sqrt(alpha))", "SY"),
    ("sy-v-no-b", SY, "v = rng.normal(b_mean, 1.0, size=dim)", "v = rng.normal(0.0, 1.0, size=dim)", "SY"),
    ("sy-sigma-power-1", SY, "dtype=np.float64) ** -1.2", "dtype=np.float64) ** -1.0", "SY"),
    ("sy-scale-no-beta", SY, "np.sqrt(beta + 1.0 + variance)", "np.sqrt(1.0 + variance)", "SY"),
    ("sy-labels-after-scaling", SY,
     "        y = np.argmax(x @ w.T + bias, axis=1).astype(np.int64)\n"
     "        x = (x / np.sqrt(beta + 1.0 + variance)).astype(np.float32)\n",
     "        x = (x / np.sqrt(beta + 1.0 + variance)).astype(np.float32)\n"
     "        y = np.argmax(x @ w.T + bias, axis=1).astype(np.int64)\n", "SY"),
    ("sy-no-size-cap", SY, "min_examples, max_examples)", "min_examples, None)", "SY"),
    ("sy-min-eq-max-refused", SY, "max_examples < min_examples", "max_examples <= min_examples", "SY"),
    # attacks.py: ALIE's z, the perturbations, the collusion's rounds, backdoor's trigger and share
    ("at-alie-s-floor", AT, "s = math.floor(n / 2 + 1) - m", "s = math.floor(n / 2) - m", "AT"),
    ("at-alie-p-one", AT, "0 < m < n and 0 < p < 1", "0 < m < n and 0 < p <= 1", "AT"),
    ("at-unit-zero-mean", AT, "if norm > 0 else", "if norm >= 0 else", "AT"),
    ("at-collusion-drops-last-round", AT, "if r < round_id - 1]", "if r < round_id]", "AT"),
    ("at-trigger-index-0-refused", AT, "min(self.indices) < 0", "min(self.indices) <= 0", "AT"),
    ("at-trigger-full-side-refused", AT, "size > min(input_shape[-2:])", "size >= min(input_shape[-2:])", "AT"),
    ("at-trigger-flat-one-row", AT, "idx = tuple(range(n - size * size, n))", "idx = tuple(range(n - size, n))", "AT"),
    ("at-backdoor-none-stamped", AT, "size=max(1, round(fraction * len(y)))", "size=max(0, round(fraction * len(y)))",
     "AT"),
]
_V, _A = _T + "test_virtual_clock_edges.py", _T + "test_async_runs_edges.py"
_P, _S, _X = _T + "test_partition_edges.py", _T + "test_synthetic_paper.py", _T + "test_attack_edges.py"
_MISSED = {
    _V: "vf-up-median-is-down vf-window-end-inside vf-no-dropout vf-no-end-check vf-check-2min",
    _A: (
        "ar-deadline-p10 ar-quorum-floor ar-deadline-counts-upload ar-deadline-ge ar-report-at-close-dropped "
        "ar-late-bytes-uncounted ar-commit-quorum-gt ar-unweighted-mean ar-round-lasts-deadline "
        "ar-no-over-selection ar-async-deadline-sync ar-async-staleness-zero ar-target-strict "
        "ab-speedup-inverted ab-bytes-ratio-inverted ab-quick-16-rounds"
    ),
    _P: "pa-min-size-fifth pa-draw-fits-gt pa-shards-total-ge pa-shards-fallback-le pa-quantity-floor-minus1",
    _S: (
        "sy-alpha-beta-swapped sy-sigma-power-1 sy-scale-no-beta sy-labels-after-scaling sy-no-size-cap "
        "sy-min-eq-max-refused"
    ),
    _X: (
        "at-unit-zero-mean at-collusion-drops-last-round at-trigger-index-0-refused at-trigger-full-side-refused "
        "at-backdoor-none-stamped"
    ),
}
AFTER = {mid: tests for tests, ids in _MISSED.items() for mid in ids.split()}
