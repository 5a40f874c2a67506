"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_M, _T = "tests/models/", "tests/tools/"
GROUPS = {
    "BLD": _T + "test_output_folders.py " + _M + "test_bad_input.py",
    "OUT": _T + "test_output_folders.py " + _T + "test_beside_json.py " + _T + "test_bench_robustness.py",
    "GRA": _M + "test_graph_oracle.py " + _M + "test_activations.py",
    "ORT": "tests/edge_runtime/test_ort_training_backend.py",
    "OPT": _M + "test_onnx_import.py tests/test_config_fuzz.py",
    "CLI": _T + "test_cli_errors.py " + _T + "test_cli_inputs.py",
    "SPA": _M + "test_onnx_sparse.py",
    "EXT": _M + "test_onnx_extract.py",
    "SCO": _M + "test_onnx_names.py " + _M + "test_onnx_extract.py",
    "NOT": _M + "test_onnx_import.py " + _M + "test_import_torch.py " + _M + "test_onnx_import_gemm.py",
    "SRC": (_M + "test_onnx_external_data.py " + _M + "test_onnx_stored_tensors.py " + _M
            + "test_onnx_finite_numbers.py " + _M + "test_import_torch_variants.py"),
}
BU, OD, GR, OB = "models/build.py", "models/output_dir.py", "models/graphs.py", "models/onnx_builder.py"
OA, IO, IC, SP = "models/ort_artifacts.py", "models/import_options.py", "models/import_cli.py", "models/onnx_sparse.py"
EX, SC, NO, SO = "models/onnx_extract.py", "models/onnx_scope.py", "models/onnx_notice.py", "models/onnx_source.py"
MUTANTS = [
    # build.py: the output folder's checks, the record, the manifest
    ("bu-manifest-unread", BU, "(outdir / MANIFEST_FILE).is_file() and _is_manifest(outdir / MANIFEST_FILE)",
     "(outdir / MANIFEST_FILE).is_file()", "BLD"),
    ("bu-record-untrusted", BU, "if read_record(outdir / BUILD_RECORD) is not None:", "if False:", "BLD"),
    ("bu-foreign-record-kept", BU, "if (outdir / BUILD_RECORD).exists() or (outdir / BUILD_RECORD).is_symlink():",
     "if False:", "BLD"),
    ("bu-empty-ort-foreign", BU, " or any(ort.iterdir())) and", ") and", "BLD"),
    ("bu-ort-check-late", BU, "if want_ort and (outdir / ORT_DIR).exists():", "if False:", "BLD"),
    ("bu-no-record", BU, '    write_record(outdir / BUILD_RECORD, _BUILD_NAMES, "fedge build-artifacts")', "    pass",
     "BLD"),
    ("bu-stale-backbone-kept", BU, '(outdir / "backbone.onnx").unlink(missing_ok=True)', "pass", "BLD"),
    ("bu-model-id-path", BU, 'if k != "onnx"},', "if True},", "BLD"),
    ("bu-params-unguarded", BU, '_BUILD_NAMES = ("backbone.onnx", "eval.onnx", "params_init.npz", MANIFEST_FILE,',
     '_BUILD_NAMES = ("backbone.onnx", "eval.onnx", MANIFEST_FILE,', "BLD"),
    ("bu-dangling-link", BU, "(n for n in names if (outdir / n).exists() or (outdir / n).is_symlink())",
     "(n for n in names if (outdir / n).exists())", "BLD"),
    ("bu-ort-files-unlisted", BU, "files.extend(generate_ort_artifacts(spec, values, outdir))",
     "generate_ort_artifacts(spec, values, outdir)", "ORT"),
    # output_dir.py
    ("od-record-string", OD, "if not isinstance(names, list) or not all(", "if not all(", "OUT"),
    ("od-dotdot", OD, 'and _RELATIVE.match(n) and ".." not in n', "and _RELATIVE.match(n)", "OUT"),
    ("od-parent-file", OD, "for folder in (outdir, *outdir.parents):", "for folder in (outdir,):", "OUT"),
    ("od-claim-record-foreign", OD, "taken.add(record)  # a file", "pass  # a file", "OUT"),
    ("od-no-stale-removal", OD, "for stale in sorted(ours - set(written)):", "for stale in ():", "OUT"),
    # graphs.py: the hand-written backward and the optimizers
    ("gr-relu-at-zero", GR, 'return gb.mul(dh, gb.op("Cast", [gb.op("Greater", [pre, gb.const(0.0)])]',
     'return gb.mul(dh, gb.op("Cast", [gb.op("GreaterOrEqual", [pre, gb.const(0.0)])]', "GRA"),
    ("gr-leaky-at-zero", GR, 'positive = gb.op("Cast", [gb.op("Greater", [pre,',
     'positive = gb.op("Cast", [gb.op("GreaterOrEqual", [pre,', "GRA"),
    ("gr-leaky-slope", GR, "gb.mul(positive, gb.const(1.0 - slope))", "gb.mul(positive, gb.const(1.0))", "GRA"),
    ("gr-gelu-density", GR, "gb.mul(gb.const(-0.5), gb.mul(pre, pre))", "gb.mul(gb.const(-1.0), gb.mul(pre, pre))",
     "GRA"),
    ("gr-lora-b-unscaled", GR, "gb.mul(gb.matmul(gb.transpose(t.lora_u), dpre), scale)",
     "gb.matmul(gb.transpose(t.lora_u), dpre)", "GRA"),
    ("gr-lora-dh-dropped", GR, "dh = gb.add(dh, gb.matmul(du, gb.transpose(t.lora_a)))", "pass", "GRA"),
    ("gr-prox-sign", GR, 'gb.sub(trainable[p.name], anchor)', 'gb.sub(anchor, trainable[p.name])', "GRA"),
    ("gr-correction-dropped", GR, "g = gb.add(gb.add(g, prox), correction)", "g = gb.add(g, prox)", "GRA"),
    ("gr-loss-last-head", GR, "loss = ce if loss is None else gb.add(loss, ce)", "loss = ce", "GRA"),
    ("gr-dfeats-last-head", GR, "dfeats = back if dfeats is None else gb.add(dfeats, back)", "dfeats = back", "GRA"),
    # onnx_builder.py
    ("ob-const-shape-merged", OB, "key = (arr.dtype.str, arr.shape, arr.tobytes())",
     "key = (arr.dtype.str, arr.tobytes())", "GRA"),
    ("ob-ir-11", OB, "IR_VERSION = 8  #", "IR_VERSION = 11  #", "ORT"),
    # ort_artifacts.py
    ("oa-prox-half", OA, "np.array(0.5, np.float32)", "np.array(1.0, np.float32)", "ORT"),
    ("oa-correction-dropped", OA, "loss = gb.add(gb.add(loss, gb.mul(gb.mul(mu, half), prox)), corr)",
     "loss = gb.add(loss, gb.mul(gb.mul(mu, half), prox))", "ORT"),
    ("oa-data-loss-regularized", OA, 'gb.op_to("Identity", [data_loss], "data_loss")',
     'gb.op_to("Identity", [loss], "data_loss")', "ORT"),
    ("oa-foreign-ort-replaced", OA, "if p.name not in ORT_FILES) if target.is_dir()",
     "if False) if target.is_dir()", "ORT"),
    ("oa-counter-kept", OA, r'''re.sub(r"^onnx::(.*)::\d+$", r"\1", out)''', "out", "ORT"),
    # import_options.py, import_cli.py
    ("io-rank-max-out", IO, "if not 1 <= self.lora_rank <= MAX_UNITS:", "if not 1 <= self.lora_rank < MAX_UNITS:",
     "OPT"),
    ("io-alpha-inf", IO, "if not 0 < self.lora_alpha < math.inf:", "if not 0 < self.lora_alpha:", "OPT"),
    ("io-values-max-out", IO, "math.prod(self.input_shape) > MAX_VALUES:", "math.prod(self.input_shape) >= MAX_VALUES:",
     "OPT"),
    ("ic-defaults-unchecked", IC, "        if given:\n", "        if False:\n", "CLI"),
    # onnx_sparse.py, onnx_extract.py, onnx_scope.py, onnx_notice.py
    ("sp-negative-index", SP, "(indices.min() < 0 or indices.max()", "(indices.max()", "SPA"),
    ("sp-constant-sparse", SP, 'node.attribute[0].name == "sparse_value":', 'node.attribute[0].name == "-":', "SPA"),
    ("ex-nested-function", EX, "            todo.extend(local[key].node)", "            pass", "EXT"),
    ("sc-initializer-rewrite", SC, "for v in (*graph.input, *graph.initializer)}", "for v in graph.input}", "SCO"),
    ("no-layer-refusal-unsaid", NO, "            return f\"{head}: it cannot start at",
     "            f\"{head}: it cannot start at", "NOT"),
    # onnx_source.py
    ("so-negative-dim", SO, 'if any(d < 0 for d in tensor.dims):  # numpy', 'if False:  # numpy', "SRC"),
    ("so-eval-dropout-refused", SO, "if flag is not None and not numpy_helper.to_array(flag).any():",
     "if False:", "SRC"),
    ("so-transpose-perm", SO, "value if perm == [[0, 1]] else value.T", "value.T", "SRC"),
    ("so-offset-negative", SO, "or length != need or offset < 0 \\", "or length != need \\", "SRC"),
]
_BE, _GE = _M + "test_build_mutation_edges.py", _M + "test_graph_mutation_edges.py"
_OE = _M + "test_import_options_edges.py"
_SE, _AE = _M + "test_source_mutation_edges.py", "tests/edge_runtime/test_ort_artifacts_edges.py"
AFTER = {
    **dict.fromkeys(["bu-foreign-record-kept", "bu-ort-check-late", "bu-stale-backbone-kept", "bu-model-id-path",
                     "bu-params-unguarded", "bu-dangling-link", "od-record-string", "oa-foreign-ort-replaced"], _BE),
    **dict.fromkeys(["gr-relu-at-zero", "gr-leaky-at-zero", "gr-lora-dh-dropped"], _GE),
    "oa-counter-kept": _AE,
    **dict.fromkeys(["io-rank-max-out", "io-alpha-inf", "io-values-max-out"], _OE),
    **dict.fromkeys(["sp-negative-index", "sp-constant-sparse", "so-eval-dropout-refused", "so-transpose-perm",
                     "so-offset-negative"], _SE),
}
