"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_M = "tests/models/"
GROUPS = {
    "LIN": _M + "test_onnx_import_gemm.py " + _M + "test_onnx_import.py",
    "CUT": _M + "test_onnx_import.py " + _M + "test_onnx_cut_size.py",
    "ACT": _M + "test_onnx_import.py " + _M + "test_import_torch_variants.py",
    "SKL": _M + "test_import_sklearn_linear.py",
    "HEAD": _M + "test_onnx_import_outsider.py " + _M + "test_onnx_import_exports.py",
    "NEW": _M + "test_onnx_import.py " + _M + "test_onnx_cut_size.py",
    "PRE": _M + "test_onnx_import_exports.py " + _M + "test_onnx_cut_size.py",
    "CHK": _M + "test_onnx_import.py " + _M + "test_onnx_import_gemm.py",
    "FIN": _M + "test_onnx_finite.py " + _M + "test_onnx_finite_numbers.py",
    "FOLD": _M + "test_import_torch_variants.py",
    "ATTR": _M + "test_onnx_attrs.py",
    "EXP": _M + "test_export_affine.py " + _M + "test_onnx_import_outsider.py tests/tools/test_device_export.py",
    "PAR": _M + "test_remode.py " + _M + "test_graph_oracle.py",
}
IM, CU, AC, LI = "models/onnx_import.py", "models/onnx_cut.py", "models/onnx_activation.py", "models/onnx_linear.py"
HE, NH, PR, BA = "models/onnx_head.py", "models/onnx_new_head.py", "models/onnx_prefix.py", "models/onnx_batch.py"
CH, FI, FO, AT = "models/onnx_check.py", "models/onnx_finite.py", "models/onnx_fold.py", "models/onnx_attrs.py"
EX, PA, SP = "models/export.py", "models/params.py", "models/spec.py"
MUTANTS = [
    # onnx_import.py: Gemm's transB/alpha/beta/transA, MatMul + Add, temperature, tail chain, cut
    ("im-transb-ignored", IM, '(w.T if attrs.get("transB", 0) else w) * np.float32(', "w * np.float32(", "LIN"),
    ("im-alpha-dropped", IM, ' * np.float32(attrs.get("alpha", 1.0))', "", "LIN"),
    ("im-beta-dropped", IM, 'c * np.float32(attrs.get("beta", 1.0))', "c", "LIN"),
    ("im-transa-accepted", IM, 'if attrs.get("transA", 0):', "if False:", "LIN"),
    ("im-add-bias-ignored", IM, "if len(other) == 1 and other[0] in g.consts:", "if False:", "LIN"),
    ("im-div-temperature-as-mul", IM, 'k = np.float32(s.flat[0] if scale.op_type == "Mul" else 1 / s.flat[0])',
     "k = np.float32(s.flat[0])", "LIN"),
    ("im-div-either-side", IM, 'scale.op_type == "Mul" or scale.input[0] == out):', 'scale.op_type == "Mul" or True):',
     "LIN"),
    ("im-bias-resized", IM, "return np.broadcast_to(value, (1, units)).reshape(-1)", "return np.resize(value, units)",
     "LIN"),
    ("im-binary-head-swapped", IM, "weight=np.hstack([np.zeros_like(last.weight), last.weight]),",
     "weight=np.hstack([last.weight, np.zeros_like(last.weight)]),", "LIN"),
    ("im-sigmoid-hidden-kept-out", IM, 'not (found.name == "sigmoid" and w.shape[1] == 1)',
     'not (found.name == "sigmoid")', "ACT"),
    ("im-cut-latest", IM, "    for node in g.model.graph.node:\n        if node.op_type in DENSE_OPS",
     "    for node in reversed(g.model.graph.node):\n        if node.op_type in DENSE_OPS", "CUT"),
    ("im-width-unchecked", IM, "if layers and layers[-1].weight.shape[1] != layer.weight.shape[0]:", "if False:",
     "CUT"),
    ("cu-int64-cut", CU, "if elem not in (TensorProto.FLOAT, TensorProto.UNDEFINED):",
     "if elem not in (TensorProto.FLOAT, TensorProto.UNDEFINED, TensorProto.INT64):", "CUT"),
    # onnx_activation.py
    ("ac-leaky-slope-1-out", AC, "if not 0 <= slope <= 1:", "if not 0 <= slope < 1:", "ACT"),
    ("ac-tanh-sigmoid-swapped", AC, '"Tanh": "tanh", "Sigmoid": "sigmoid"', '"Tanh": "sigmoid", "Sigmoid": "tanh"',
     "ACT"),
    ("ac-gelu-tanh-accepted", AC, 'if node.op_type == "Gelu" and attrs.get(', "if False and attrs.get(", "ACT"),
    ("ac-prelu-unequal", AC, "if not np.all(np.asarray(slope, np.float32) == first):", "if False:", "ACT"),
    ("ac-gelu-tolerance", AC, "TOLERANCE = 1e-5", "TOLERANCE = 1e-3", "ACT"),
    # onnx_linear.py (scikit-learn)
    ("li-mirror-no-intercept", LI, " and intercepts[0] == -intercepts[1]", "", "SKL"),
    ("li-none-as-softmax", LI, 'targets == labels.size and transform == "SOFTMAX":',
     'targets == labels.size and transform in ("SOFTMAX", "NONE"):', "SKL"),
    # onnx_head.py
    ("he-classes-unchecked", HE, "elif len(shape) == 2 and axis in (-1, 1) and shape[1] == classes:",
     "elif len(shape) == 2 and axis in (-1, 1):", "HEAD"),
    ("he-binary-ops-always", HE, "allowed = KEEPS_PREDICTION + (BINARY_PROBABILITIES if binary else ()) + also",
     "allowed = KEEPS_PREDICTION + BINARY_PROBABILITIES + also", "HEAD"),
    # onnx_new_head.py, onnx_prefix.py, onnx_batch.py
    ("nh-zero-dim", NH, 'd.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None',
     'd.dim_value if d.HasField("dim_value") else None', "NEW"),
    ("nh-rank1", NH, "if dims is None or len(dims) < 2 or None in per_example:",
     "if dims is None or None in per_example:", "NEW"),
    ("pr-features-lt", PR, "if math.prod(spec.input_shape) != spec.onnx_features:",
     "if math.prod(spec.input_shape) < spec.onnx_features:", "PRE"),
    ("pr-finite-skipped", PR, "    check_backbone_finite(model, spec.onnx_cut, spec.onnx)", "    pass", "PRE"),
    ("ba-batch1-unchecked", BA, "if source_batch <= 0:  # a free", "if source_batch <= 1:  # a free", "PRE"),
    ("ba-rows-unchecked", BA, "if not all(_close(together[i:i + 1], run(sess, x[i:i + 1])) for i in range(len(x))):",
     "if False:", "PRE"),
    # onnx_check.py
    ("ch-tolerance", CH, "EXAMPLES, TOLERANCE = 4, 1e-4", "EXAMPLES, TOLERANCE = 4, 1e-1", "CHK"),
    ("ch-binary-flipped", CH, "h = h[:, 1:] - h[:, :1]", "h = h[:, :1] - h[:, 1:]", "SKL"),
    # onnx_finite.py
    ("fi-inf-weight-skipped", FI, "if nan or inf and _reads_a_weight(node, name, producer, scope):", "if nan:", "FIN"),
    ("fi-slope-inf-skipped", FI, "np.isinf(values).any() and node.op_type in (*WEIGHT_OPS, *SLOPE_OPS)",
     "np.isinf(values).any() and node.op_type in WEIGHT_OPS", "FIN"),
    ("fi-subgraphs-skipped", FI, "        for sub in subgraphs(node):\n            _check(sub.node,",
     "        for sub in ():\n            _check(sub.node,", "FIN"),
    # onnx_fold.py
    ("fo-eps-default", FO, "var = var + np.float64(np.float32(eps))", "var = var + EPSILON", "FOLD"),
    ("fo-mean-sign", FO, "((b - mean) * a + shift)", "((b + mean) * a + shift)", "FOLD"),
    ("fo-nonfinite-folded", FO, "if not (np.all(var > 0) and np.isfinite(np.stack([scale, shift, mean, var])).all()):",
     "if not np.all(var > 0):", "FOLD"),
    # onnx_attrs.py
    ("at-string-allowed", AT, "if expected is not None and attr.type != int(expected.type):",
     "if expected is not None and attr.type != int(expected.type) and attr.type != onnx.AttributeProto.STRING:",
     "ATTR"),
    # export.py, spec.py's LoRA scale, params.py
    ("ex-lora-unscaled", EX, "w = w + spec.lora_scale * (", "w = w + (", "EXP"),
    ("sp-lora-scale-alpha", SP, "return self.lora_alpha / self.lora_rank", "return self.lora_alpha", "EXP"),
    ("ex-default-global", EX, 'head = head or ("personal" if "personal" in manifest.heads else "global")',
     'head = head or "global"', "EXP"),
    ("ex-mean-lo-dropped", EX, '"mean_lo": np.asarray(mean, np.float64) - hi', '"mean_lo": hi * 0', "EXP"),
    ("ex-leaky-slope", EX, 'alpha=float(slope))]', "alpha=0.01)]", "EXP"),
    ("ex-logits-kept", EX, 'if "logits" in taken:', "if False:", "EXP"),
    ("pa-lora-b-random", PA, 'if kind == "bias" or kind == "lora_b":', 'if kind == "bias":', "PAR"),
    ("pa-lora-a-always-shared", PA, 'a_role = "shared" if spec.lora_train_a else "frozen"', 'a_role = "shared"', "PAR"),
]
_IE = _M + "test_import_mutation_edges.py"
_EE = _M + "test_export_mutation_edges.py"
AFTER = {
    **dict.fromkeys(["im-div-temperature-as-mul", "im-div-either-side", "im-binary-head-swapped", "cu-int64-cut",
                     "ac-leaky-slope-1-out", "ac-gelu-tolerance", "li-mirror-no-intercept", "he-binary-ops-always",
                     "nh-zero-dim", "nh-rank1", "pr-features-lt", "ba-batch1-unchecked", "ba-rows-unchecked",
                     "fi-slope-inf-skipped", "fo-nonfinite-folded"], _IE),
    "pr-finite-skipped": _M + "test_onnx_finite.py",  # a covering test outside the PRE group
    **dict.fromkeys(["sp-lora-scale-alpha", "pa-lora-b-random"], _EE),
}
