"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

GROUPS = {
    "SS": "tests/edge_runtime/test_split_scale.py tests/tools/test_test_split_scale.py",
    "FEAT": (
        "tests/edge_runtime/test_device_standardize.py "
        "tests/tools/test_standardize.py "
        "tests/models/test_export_affine.py"
    ),
    "REC": "tests/edge_runtime/test_device_standardize.py tests/tools/test_device_export.py",
    "STD": (
        "tests/tools/test_auto_standardize.py "
        "tests/tools/test_standardize.py "
        "tests/tools/test_data_scale.py "
        "tests/tools/test_auto_pixels.py"
    ),
    "INT": (
        "tests/tools/test_auto_pixels.py "
        "tests/coordinator/test_guard_set_pixels.py "
        "tests/edge_runtime/test_data_formats.py"
    ),
    "EXP": "tests/models/test_export_affine.py",
    "LO": "tests/coordinator/test_weight_cut_log.py tests/coordinator/test_exclusion_log.py",
    "ROB": "tests/coordinator/test_robust.py tests/coordinator/test_robust_aggregators.py",
    "DP": "tests/coordinator/test_dp.py tests/coordinator/test_dp_rounds.py tests/coordinator/test_dp_report_left.py",
}
SS, FT, RC, ST, IN, EX = (
    "edge_runtime/split_scale.py",
    "edge_runtime/kernel/features.py",
    "edge_runtime/standardization_record.py",
    "tools/standardizing.py",
    "tools/intensities.py",
    "models/export.py",
)
LO, CO, KR, CL, BU, AC = (
    "coordinator/left_out.py",
    "coordinator/robust/coordinate.py",
    "coordinator/robust/krum.py",
    "coordinator/robust/clipping.py",
    "coordinator/robust/bucketing.py",
    "coordinator/dp/accountant.py",
)
MUTANTS = [
    ("ss-sqrt", SS, "float(np.sqrt(np.mean(", "float((np.mean(", "SS"),
    ("ss-train-ge0", SS, "if not (train > 0 and", "if not (train >= 0 and", "SS"),
    ("ss-ratio-ge", SS, "gap.ratio > limit", "gap.ratio >= limit", "SS"),
    ("ss-inv-le", SS, "gap.ratio < 1 / limit", "gap.ratio <= 1 / limit", "SS"),
    ("ss-one-way", SS, "gap.ratio > limit or gap.ratio < 1 / limit", "gap.ratio > limit", "SS"),
    ("ss-limit-8", SS, "RATIO_LIMIT = 16.0", "RATIO_LIMIT = 8.0", "SS"),
    ("ss-f32", SS, "np.square(x, dtype=np.float64)", "np.square(x)", "SS"),
    ("ss-isfinite", SS, "and math.isfinite(train) and math.isfinite(test)", "", "SS"),
    ("ft-const-1e5", FT, "CONSTANT_FEATURE = 1e-6", "CONSTANT_FEATURE = 1e-5", "FEAT"),
    ("ft-abs-mean", FT, "np.maximum(np.abs(mean), 1.0)", "np.maximum(mean, 1.0)", "FEAT"),
    ("ft-std-ge", FT, "np.where(std > CONSTANT_FEATURE", "np.where(std >= CONSTANT_FEATURE", "FEAT"),
    ("ft-f32max-ge", FT, "np.abs(z) > np.finfo", "np.abs(z) >= np.finfo", "FEAT"),
    ("ft-no-abs-z", FT, "np.abs(z) > np.finfo", "z > np.finfo", "FEAT"),
    ("ft-255-256", FT, "np.float32(255)", "np.float32(256)", "FEAT"),
    ("ft-empty-std0", FT, "else np.ones(x.shape[1:])", "else np.zeros(x.shape[1:])", "FEAT"),
    ("rc-std-ge0", RC, "(std > 0).all()", "(std >= 0).all()", "REC"),
    ("rc-shape", RC, "mean.shape != std.shape or ", "", "REC"),
    ("rc-finite", RC, "np.isfinite(mean).all() and ", "", "REC"),
    ("st-far-lt", ST, "max(mean, std) <= FAR_FROM_UNIT and", "max(mean, std) < FAR_FROM_UNIT and", "STD"),
    ("st-barely-gt", ST, "std >= BARELY_VARIES:", "std > BARELY_VARIES:", "STD"),
    ("st-far-5", ST, "FAR_FROM_UNIT = 4.0", "FAR_FROM_UNIT = 5.0", "STD"),
    ("st-top-neg", ST, "max(top, -float(x.min()), float(x.max()))", "max(top, float(x.max()))", "STD"),
    ("st-chan-term", ST, " + delta ** 2 * (n * len(x) / total)", "", "STD"),
    ("st-chan-weight", ST, "delta * (len(x) / total)", "delta * (n / total)", "STD"),
    ("st-ddof1", ST, "np.sqrt(m2 / n)", "np.sqrt(m2 / (n - 1))", "STD"),
    ("st-abs-mean", ST, "float(np.abs(mean).max())", "float(mean.max())", "STD"),
    (
        "st-pretrained",
        ST,
        "Standardizing(finding is not None and not pretrained,",
        "Standardizing(finding is not None,",
        "STD",
    ),
    ("in-half-lt", IN, "high.max() <= HALF_OF_8_BIT", "high.max() < HALF_OF_8_BIT", "INT"),
    ("in-varying-ge", IN, "(high[varying] > HALF_OF_8_BIT)", "(high[varying] >= HALF_OF_8_BIT)", "INT"),
    ("in-shared-le", IN, ".mean() < SHARED_SCALE", ".mean() <= SHARED_SCALE", "INT"),
    ("in-flag-0.1", IN, "FLAG_SHARE = 0.01", "FLAG_SHARE = 0.1", "INT"),
    ("in-flag-gt", IN, "(ones >= FLAG_SHARE * n)", "(ones > FLAG_SHARE * n)", "INT"),
    ("in-255-lt", IN, "x.max() <= 255", "x.max() < 255", "INT"),
    ("in-integer", IN, " and np.array_equal(x, np.round(x))", "", "INT"),
    ("in-bool", IN, 'dtype.kind == "b" or ', "", "INT"),
    ("in-low0", IN, "flags = (low == 0) & ", "flags = ", "INT"),
    ("ex-lo", EX, '"mean_lo": np.asarray(mean, np.float64) - hi', '"mean_lo": 0 * hi', "EXP"),
    ("ex-std-size", EX, " or std.size != mean.size", "", "EXP"),
    ("lo-cut-gt", LO, ">= CUT_LOG_ROUNDS]", "> CUT_LOG_ROUNDS]", "LO"),
    ("lo-show-10", LO, "ids[:20]", "ids[:10]", "LO"),
    ("lo-prune-le", LO, "if round_id - r < CUT_LOG_ROUNDS}", "if round_id - r <= CUT_LOG_ROUNDS}", "LO"),
    ("co-slice", CO, "s[b : x.shape[0] - b]", "s[b : x.shape[0] - b + 1]", "ROB"),
    ("co-beta-le", CO, "0.0 <= beta < 0.5", "0.0 <= beta <= 0.5", "ROB"),
    ("kr-nearest", KR, ": n - f - 2]", ": n - f - 1]", "ROB"),
    (
        "kr-clamp",
        KR,
        "np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)",
        "sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)",
        "ROB",
    ),
    ("kr-m-n", KR, "1 <= m <= n - f:", "1 <= m <= n:", "ROB"),
    ("cl-scale-ge", CL, "np.where(norms > tau,", "np.where(norms >= tau,", "ROB"),
    ("cl-iter-0", CL, "if iterations < 1:", "if iterations < 0:", "ROB"),
    ("bu-slice", BU, "perm[i : i + s]", "perm[i : i + s - 1]", "ROB"),
    ("ac-factor-1", AC, 'return 2.0 if sampling == "fixed" else 1.0', "return 1.0", "DP"),
    ("ac-check-ge", AC, "if after > target_epsilon:", "if after >= target_epsilon:", "DP"),
    ("ac-left-lt", AC, "while hi <= limit and fits(hi):", "while hi < limit and fits(hi):", "DP"),
    (
        "ac-no-unsampled",
        AC,
        'return min(sampled, _unsampled_epsilon(charges, delta)) if sampling == "fixed" else sampled',
        "return sampled",
        "DP",
    ),
]

E, S, T, P8 = (
    "tests/edge_runtime/test_split_scale.py",
    "tests/edge_runtime/test_standardize_edges.py",
    "tests/tools/test_standardizing_edges.py",
    "tests/tools/test_eight_bit_edges.py",
)
R, A, LL = (
    "tests/coordinator/test_robust.py",
    "tests/coordinator/test_dp_accountant_edges.py",
    "tests/coordinator/test_left_out_log.py",
)
AFTER = {
    "ss-ratio-ge": E,
    "ss-inv-le": E,
    "ss-limit-8": E,
    "ss-isfinite": E,
    "ft-abs-mean": S,
    "ft-std-ge": S,
    "ft-f32max-ge": S,
    "ft-no-abs-z": S,
    "ft-255-256": S,
    "ft-empty-std0": S,
    "rc-std-ge0": S,
    "rc-shape": S,
    "rc-finite": S,
    "st-far-lt": T,
    "st-barely-gt": T,
    "st-far-5": T,
    "st-abs-mean": T,
    "in-half-lt": P8,
    "in-varying-ge": P8,
    "in-shared-le": P8,
    "in-flag-0.1": P8,
    "in-flag-gt": P8,
    "in-bool": P8,
    "in-low0": P8,
    "ex-std-size": "tests/models/test_export_affine.py",
    "lo-show-10": LL,
    "lo-prune-le": f"{LL} tests/coordinator/test_weight_cut_log.py",
    "kr-clamp": R,
    "cl-scale-ge": R,
    "ac-check-ge": A,
    "ac-left-lt": A,
}
