"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_C, _S = "tests/coordinator/", "tests/secagg/"
# The accounting-only tests of test_dp.py and test_dp_rounds.py (dp-accounting compositions and
# calibrations, 5 to 33 s each: 85 of the group's 98 s) are left out of the groups of modules they
# do not run (mechanism.py, round.py, compose.py, budget.py); calibrate.py's group keeps them.
_ACCOUNTING = " ".join("--deselect=" + _C + t for t in (
    "test_dp.py::test_fixed_size_rounds_are_charged_the_smaller_of_the_sampled_and_the_plain_gaussian_bound",
    "test_dp.py::test_a_target_no_bound_can_reach_is_refused_by_name",
    "test_dp.py::test_epsilon_matches_dp_accounting_directly",
    "test_dp.py::test_the_first_round_over_budget_is_refused",
    "test_dp_rounds.py::test_the_budget_refuses_the_first_round_dp_accounting_says_exceeds_it",
    "test_dp_rounds.py::test_calibrated_z_is_kept_across_rounds"))
_DP = " ".join(_C + f for f in (
    "test_dp.py", "test_dp_rounds.py", "test_dp_adaptive_clip.py", "test_async_dp_stale.py", "test_dp_poisson.py",
    "test_device_clip.py", "test_dp_key_forgotten.py", "test_dp_empty_draw.py")) + " " + _ACCOUNTING
GROUPS = {
    "DP": _DP,  # mechanism.py, round.py
    "CAL": _C + "test_dp_calibrate_bounds.py " + _C + "test_dp.py",
    "COMP": _C + "test_dp_compose.py " + _C + "test_dp.py " + _ACCOUNTING,
    "BUD": " ".join(_C + f for f in (
        "test_dp_secure_charge.py", "test_dp_turned_off.py", "test_dp_ledger_hostile.py", "test_dp_restart_config.py",
        "test_dp.py", "test_dp_poisson.py", "test_dp_adaptive_clip.py", "test_dp_withheld_metrics.py"))
    + " " + _ACCOUNTING,
    "DIST": " ".join([_C + f for f in ("test_dp_distributed.py", "test_dp_distributed_adaptive.py",
                                       "test_noise_floor.py", "test_dp_colluders.py", "test_dp_implied.py")]
                     + [_S + "test_ddg.py"]),
    "SA": " ".join([_S + "test_stage_thresholds.py", _C + "test_dp_secure_charge.py", _C + "test_dp_distributed.py",
                    _C + "test_dp_colluders.py"]),
    "RS": " ".join(_S + f for f in ("test_moved_seeds.py", "test_raw_clients.py", "test_wrong_shares.py",
                                    "test_one_liar.py", "test_protocol.py",
                                    "test_fleet_secagg_rounds.py")),
    "KERN": " ".join(_S + f for f in (
        "test_keys_prg.py", "test_quantize_packing.py", "test_shamir.py", "test_protocol.py", "test_unmask_parallel.py",
        "test_shared_encoding.py", "test_ddg.py", "test_decode.py", "test_wrong_shares.py")),
    "ASYNC": " ".join(_C + f for f in ("test_async.py", "test_async_clip.py", "test_async_dp_stale.py",
                                       "test_admission.py", "test_async_dp_guard.py", "test_async_server.py")),
}
ME, RO, CA, CO, BU, DI = (f"coordinator/dp/{m}.py" for m in
                          ("mechanism", "round", "calibrate", "compose", "budget", "distributed"))
ST, PR, RS = (f"coordinator/secagg/{m}.py" for m in ("stages", "private", "round_state"))
MK, QU, SH, DG = (f"edge_runtime/kernel/secagg/{m}.py" for m in ("masking", "quantize", "shamir", "ddg"))
SS, MA, AD, SV = (f"coordinator/async_mode/{m}.py" for m in ("staleness", "machine", "admission", "server"))
MUTANTS = [
    # mechanism.py: the Gaussian mechanism
    ("me-noise-no-s", ME, "noise_multiplier * clip_norm, rng)", "noise_multiplier, rng)", "DP"),
    ("me-noise-after-mean", ME, "((np.asarray(v, np.float64) + noise[k]) / expected_cohort)",
     "(np.asarray(v, np.float64) / expected_cohort + noise[k])", "DP"),
    ("me-clip-lt", ME, "scale = 1.0 if norm <= bound else", "scale = 1.0 if norm < bound else", "DP"),
    ("me-stddev-gt0", ME, "if not stddev >= 0:", "if not stddev > 0:", "DP"),
    # round.py: DpMean, adaptive clipping, the noise key
    ("ro-factor-lt1", RO, "if not 0 < factor <= 1:  # more", "if not 0 < factor < 1:  # more", "DP"),
    ("ro-weight-then-clip", RO, "bounded = {k: v * factor for k, v in bounded.items()}",
     "bounded, _ = clip_to_norm({k: v * factor for k, v in delta.items()}, self.plan.clip_norm)", "DP"),
    ("ro-clipped-ge", RO, "self.clipped += int(norm > self.plan.clip_norm)",
     "self.clipped += int(norm >= self.plan.clip_norm)", "DP"),
    ("ro-within-lt", RO, "(norm if reported is None else reported) <= self.plan.clip_norm)",
     "(norm if reported is None else reported) < self.plan.clip_norm)", "DP"),
    ("ro-within-decoded", RO, "(norm if reported is None else reported) <=", "norm <=", "DP"),
    ("ro-poisson-empty", RO, 'if self.count == 0 and self.plan.sampling != "poisson":', "if self.count == 0:", "DP"),
    ("ro-z-delta", RO, "z_delta = p.delta_noise_multiplier or p.noise_multiplier", "z_delta = p.noise_multiplier",
     "DP"),
    ("ro-centred-no-half", RO, "centred = self.within - self.count / 2 +", "centred = self.within +", "DP"),
    ("ro-split-ge", RO, "if not 2 * count_stddev > z:", "if not 2 * count_stddev >= z:", "DP"),
    ("ro-split-no-2", RO, "(z ** -2 - (2 * count_stddev) ** -2) ** -0.5", "(z ** -2 - count_stddev ** -2) ** -0.5",
     "DP"),
    ("ro-next-clip-sign", RO, "np.exp(-clip_lr * (unclipped_fraction", "np.exp(clip_lr * (unclipped_fraction", "DP"),
    ("ro-release-no-floor", RO, "centred = min(max(centred, -reports / 2), reports / 2)",
     "centred = min(centred, reports / 2)", "DP"),
    ("ro-noise-no-key", RO, "entropy = [int(plan.noise_key, 16), seed, round_id] if plan.noise_key else",
     "entropy = [seed, round_id] if plan.noise_key else", "DP"),
    ("ro-quantile-le1", RO, "and 0 <= plan.target_quantile < 1 and", "and 0 <= plan.target_quantile <= 1 and", "DP"),
    # calibrate.py
    ("ca-floor-lt", CA, "if floor <= target_epsilon:", "if floor < target_epsilon:", "CAL"),
    ("ca-max-found", CA, "return min(found)", "return max(found)", "CAL"),
    ("ca-unsampled-no-factor", CA, "dpa.GaussianDpEvent(z / sensitivity_factor(sampling))", "dpa.GaussianDpEvent(z)",
     "CAL"),
    ("ca-pld-le", CA, 'if method != "pld" or z < PLD_MIN_NOISE:', 'if method != "pld" or z <= PLD_MIN_NOISE:', "CAL"),
    # compose.py
    ("co-kept-le", CO, "len(kept[0]) < len(todo) and", "len(kept[0]) <= len(todo) and", "COMP"),
    ("co-last-once", CO, "    charge, count = todo[-1]\n    accountant.compose(event(charge), count)",
     "    charge, count = todo[-1]\n    accountant.compose(event(charge), 1)", "COMP"),
    ("co-runs-plus2", CO, "out[-1] = (charge, out[-1][1] + 1)", "out[-1] = (charge, out[-1][1] + 2)", "COMP"),
    # budget.py
    ("bu-noise-key-empty", BU, "noise_key=self.noise_key(round_id))", 'noise_key="")', "BUD"),
    ("bu-open-ge", BU, "if after > cfg.target_epsilon:", "if after >= cfg.target_epsilon:", "BUD"),
    ("bu-count-no-z", BU, "count_stddev = cfg.clip_count_stddev or max(expected_cohort / 20, z)",
     "count_stddev = cfg.clip_count_stddev or expected_cohort / 20", "BUD"),
    ("bu-delta-warn-gt", BU, "if cfg.delta * population >= 1 and", "if cfg.delta * population > 1 and", "BUD"),
    ("bu-ledger-z-last", BU, 'return float(charged[0]["noise_multiplier"])',
     'return float(charged[-1]["noise_multiplier"])', "BUD"),
    # distributed.py
    ("di-rho-no-2", DI, "/ (2 * inputs * sigma ** 2) + tau", "/ (inputs * sigma ** 2) + tau", "DIST"),
    ("di-count-no-half", DI, "(rounded ** 2 + (count_scale / 2) ** 2)", "(rounded ** 2 + count_scale ** 2)", "DIST"),
    ("di-tau-one-more", DI, "for j in range(1, inputs))", "for j in range(1, inputs + 1))", "DIST"),
    ("di-colluders-floor", DI, "colluders = math.ceil(round(corrupt * asked, 9))",
     "colluders = math.floor(round(corrupt * asked, 9))", "DIST"),
    ("di-honest-le1", DI, "if min_inputs - colluders < 1:", "if min_inputs - colluders <= 1:", "DIST"),
    ("di-headroom-no-1", DI, "(1 << (field_bits - 1)) - 1 - max_inputs", "(1 << (field_bits - 1)) - max_inputs",
     "DIST"),
    ("di-wrap-no-n", DI, "headroom ** 2 / (2 * max_inputs * sigma ** 2)", "headroom ** 2 / (2 * sigma ** 2)", "DIST"),
    ("di-kappa-no-2", DI, "math.sqrt(min_inputs) / (2 * count_stddev))", "math.sqrt(min_inputs) / count_stddev)",
     "DIST"),
    ("di-sent-no-count", DI, "sent = dimension + (1 if count_stddev else 0)", "sent = dimension", "DIST"),
    # stages.py, private.py
    ("st-unmask-t-1", ST, "return max(unmask_min, t)", "return max(unmask_min, t - 1)", "SA"),
    ("st-floor-unwanted", ST, "return min(minimum, wanted) if minimum else quorum",
     "return minimum if minimum else quorum", "SA"),
    ("pr-limits-from-share", PR, "machine.limits[:UNMASK_STAGE]", "machine.limits[1:UNMASK_STAGE]", "SA"),
    ("pr-count-always", PR, "count_stddev=plan.count_stddev if plan.adaptive else 0.0",
     "count_stddev=plan.count_stddev", "SA"),
    # round_state.py: which masks are removed
    ("rs-dropped-cohort", RS, "self.dropped = tuple(sorted(shared - set(asked)))",
     "self.dropped = tuple(sorted(set(self.cohort) - set(asked)))", "RS"),
    ("rs-blame-le", RS, "if holders - n < self.t and n > LIARS:", "if holders - n <= self.t and n > LIARS:", "RS"),
    ("rs-blame-ge-liars", RS, "if holders - n < self.t and n > LIARS:", "if holders - n < self.t and n >= LIARS:",
     "RS"),
    ("rs-unopened-any", RS, "if not set(reply.unopened) <= set(self.delivered.get(sender, ())):", "if False:", "RS"),
    # kernel: masks, field, quantization, Shamir, the discrete Gaussian
    ("mk-pair-sign", MK, "acc = plus if survivor < gone else minus", "acc = plus if survivor > gone else minus",
     "KERN"),
    ("mk-field-off1", MK, "np.uint32((1 << field_bits) - 1) if field_bits < 32",
     "np.uint32((1 << field_bits) - 2) if field_bits < 32", "KERN"),
    ("qu-levels-off1", QU, "return (1 << (bits - 1)) - 1", "return (1 << (bits - 1))", "KERN"),
    ("qu-field-floor", QU, "max(0, math.ceil(math.log2(devices)))", "max(0, math.floor(math.log2(devices)))", "KERN"),
    ("qu-no-linf-clip", QU, "scaled = np.clip(y, -clip_range, clip_range) * (top / clip_range)",
     "scaled = y * (top / clip_range)", "KERN"),
    ("sh-used-t-1", SH, "used, extra = list(shares)[:threshold], list(shares)[threshold:]",
     "used, extra = list(shares)[:threshold - 1], list(shares)[threshold - 1:]", "KERN"),
    ("sh-few-t-1", SH, "    if len(shares) < threshold:\n        raise ValueError(f\"{len(shares)} shares, need "
     "{threshold}\")\n    used, extra", "    if len(shares) < threshold - 1:\n        raise ValueError("
     "f\"{len(shares)} shares, need {threshold}\")\n    used, extra", "KERN"),
    ("sh-plain-degree-t-2", SH, "coeffs = [secret] + [randbelow(prime) for _ in range(threshold - 1)]",
     "coeffs = [secret] + [randbelow(prime) for _ in range(threshold - 2)]", "KERN"),
    ("sh-packed-degree-t-2", SH, "h = [randbelow(PRIME) for _ in range(threshold - 2)]",
     "h = [randbelow(PRIME) for _ in range(threshold - 3)]", "KERN"),
    ("sh-in-field-le", SH, "(value >> 64) < PRIME and", "(value >> 64) <= PRIME and", "KERN"),
    ("sh-minus-one-point", SH, "if PRIME - 1 in points:", "if PRIME in points:", "KERN"),
    ("sh-secret-le", SH, 'if int.from_bytes(half, "big") < PRIME:', 'if int.from_bytes(half, "big") <= PRIME:', "KERN"),
    ("dg-bound-no-min", DG, "return min(math.sqrt(inflated), a + math.sqrt(d))", "return math.sqrt(inflated)", "DIST"),
    ("dg-signed-gt", DG, "np.where(t >= 1 << (field_bits - 1),", "np.where(t > 1 << (field_bits - 1),", "DIST"),
    ("dg-count-lt", DG, "(half if norm <= clip_norm else -half)", "(half if norm < clip_norm else -half)", "DIST"),
    ("dg-laplace-t", DG, "t = math.floor(sigma) + 1", "t = math.floor(sigma) + 2", "DIST"),
    # async: the staleness weight, max staleness, admission, the charge per flush
    ("ss-exponent-1", SS, "return float((1.0 + staleness) ** -exponent)",
     "return float((1.0 + staleness) ** -(2 * exponent))", "ASYNC"),
    ("ss-renormalised", SS, "axes=1) / w.sum()", "axes=1) / (w * f).sum()", "ASYNC"),
    ("ma-stale-ge", MA, "if s > m.max_staleness:", "if s >= m.max_staleness:", "ASYNC"),
    ("ad-no-sender", AD, "if sender != update.device_id:", "if False:", "ASYNC"),
    ("ad-no-counted", AD, "if digest is not None:", "if False:", "ASYNC"),
    ("sv-flush-sampled", SV, "plan = self.privacy.plan(buffer_id, k, k, k, self.state.extra)",
     "plan = self.privacy.plan(buffer_id, 10 * k, k, k, self.state.extra)", "ASYNC"),
    ("sv-dp-limit-fair", SV, "if self.privacy.enabled or (self.round is not None and self.round.privacy is not None):",
     "if False:", "ASYNC"),
]

DPB, SAB, ASB = (
    "tests/coordinator/test_dp_boundaries.py",
    "tests/secagg/test_secagg_boundaries.py",
    "tests/coordinator/test_async_boundaries.py",
)
AFTER = {
    **{m: DPB for m in ("ca-floor-lt", "ca-max-found", "me-stddev-gt0", "ro-clipped-ge", "ro-within-lt",
                        "ro-release-no-floor", "ro-quantile-le1", "co-kept-le", "bu-open-ge", "bu-count-no-z",
                        "bu-delta-warn-gt", "bu-ledger-z-last", "di-sent-no-count")},
    **{m: SAB for m in ("st-floor-unwanted", "pr-limits-from-share", "rs-blame-le", "rs-blame-ge-liars",
                        "dg-bound-no-min")},
    "ad-no-sender": ASB,
}
