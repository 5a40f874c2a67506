"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E, _M = "tests/edge_runtime/", "tests/models/"
GROUPS = {
    "PO": " ".join([_M + "test_graph_oracle.py", _M + "test_graph_mutation_edges.py", _E + "test_training_guards.py",
                    _E + "test_fedprox_gradient.py", _E + "test_personalize.py", _E + "test_personalize_edges.py",
                    _E + "test_ort_training_backend.py"]),
    "OT": " ".join([_E + "test_ort_training_backend.py", _E + "test_personalize.py",
                    _E + "test_ort_artifacts_edges.py", _E + "test_fedprox_gradient.py"]),
}
PO, OT = "edge_runtime/trainer/portable.py", "edge_runtime/trainer/ort_training.py"
MUTANTS = [
    # portable.py: the session, the feeds at start, the hyperparameter cache, write-back, the clip, read-back
    ("po-threads-one", PO, "opts.intra_op_num_threads = threads", "opts.intra_op_num_threads = 1", "PO"),
    ("po-unknown-optimizer", PO, "if optimizer not in _HYPER_FIELDS:", "if False:", "PO"),
    ("po-shared-all-trainable", PO, 'self.shared = [p.name for p in manifest.by_role("shared")]',
     "self.shared = [p.name for p in manifest.trainable]", "PO"),
    ("po-opt-state-fresh", PO, "state = opt_state if opt_state is not None else fresh_optimizer_state(",
     "state = fresh_optimizer_state(", "PO"),
    ("po-params-uncast", PO, "arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in",
     "arrays = {k: np.asarray(v) for k, v in", "PO"),
    ("po-anchor-is-params", PO, 'arrays[f"{name}.global"] = np.ascontiguousarray(anchor[name], np.float32)',
     'arrays[f"{name}.global"] = np.ascontiguousarray(params[name], np.float32)', "PO"),
    ("po-correction-dropped", PO, "c = correction.get(name) if correction else None", "c = None", "PO"),
    ("po-correction-negated", PO, 'arrays[f"{name}.correction"] = (np.ascontiguousarray(c, np.float32)',
     'arrays[f"{name}.correction"] = (np.ascontiguousarray(-c, np.float32)', "PO"),
    ("po-param-names-shared", PO, "self.param_names = list(params)", "self.param_names = list(self.shared)", "PO"),
    ("po-hyper-key-kept", PO, "self._hyper_key = None", 'self._hyper_key = getattr(self, "_hyper_key", None)', "PO"),
    ("po-hyper-stale", PO, "if key != self._hyper_key:", "if self._hyper_key is None:", "PO"),
    ("po-hyper-order", PO, '"adamw": ("lr", "weight_decay", "mu", "beta1", "beta2", "eps"),',
     '"adamw": ("lr", "weight_decay", "mu", "beta2", "beta1", "eps"),', "PO"),
    ("po-z-noncontiguous", PO, 'feeds["z"] = self._ortvalue(np.ascontiguousarray(z, np.float32))',
     'feeds["z"] = self._ortvalue(np.asarray(z, np.float32))', "PO"),
    ("po-adamw-step-2", PO, 'feeds["step"].numpy() + 1, np.float32', 'feeds["step"].numpy() + 2, np.float32', "PO"),
    ("po-before-view", PO, "before = {k: feeds[k].numpy().copy() for k in self.param_names}",
     "before = {k: feeds[k].numpy() for k in self.param_names}", "PO"),
    ("po-writeback-dropped", PO, 'feeds[name[: -len(".new")]] = value', "pass", "PO"),
    ("po-clip-skipped", PO, "if before is not None:", "if False:", "PO"),
    ("po-clip-unwritten", PO, "feeds[k] = self._ortvalue(np.ascontiguousarray(v, np.float32))", "pass", "PO"),
    ("po-current-view", PO, "{k: self.feeds[k].numpy().copy() for k in self.param_names}",
     "{k: self.feeds[k].numpy() for k in self.param_names}", "PO"),
    ("po-state-view", PO, "np.asarray(self.feeds[k].numpy()).copy() for k in self.state_names",
     "np.asarray(self.feeds[k].numpy()) for k in self.state_names", "PO"),
    ("po-predict-prefix", PO, 'n[len("logits_") :]', 'n[len("logits") :]', "PO"),
    # ort_training.py: the manifest check, trainable names, start, the optimizer, lr, clip, read-back
    ("ot-manifest-one-file", OT, 'for f in (f"{ORT_DIR}/training_model.onnx", f"{ORT_DIR}/checkpoint")',
     'for f in (f"{ORT_DIR}/training_model.onnx",)', "OT"),
    ("ot-unknown-optimizer", OT, "if optimizer not in OPTIMIZER_FILES:", "if False:", "OT"),
    ("ot-trainable-shared", OT, "self.trainable = [p.name for p in manifest.trainable]",
     'self.trainable = [p.name for p in manifest.by_role("shared")]', "OT"),
    ("ot-threads-one", OT, "opts.intra_op_num_threads = self.threads", "opts.intra_op_num_threads = 1", "OT"),
    ("ot-params-uncast", OT, "state.parameters[name] = np.ascontiguousarray(params[name], np.float32)",
     "state.parameters[name] = np.asarray(params[name])", "OT"),
    ("ot-train-mode-dropped", OT, "self.module.train()", "pass", "OT"),
    ("ot-optim-kept", OT, "self.optim = self.optim_hyper = None  # made", "pass  # made", "OT"),
    ("ot-anchor-is-params", OT, 'extra[f"{name}.global"] = np.ascontiguousarray(anchor[name], np.float32)',
     'extra[f"{name}.global"] = np.ascontiguousarray(params[name], np.float32)', "OT"),
    ("ot-correction-dropped", OT, "c = correction.get(name) if correction else None", "c = None", "OT"),
    ("ot-mu-zero", OT, 'feeds["mu"] = np.asarray(hyper.mu, np.float32)', 'feeds["mu"] = np.asarray(0.0, np.float32)',
     "OT"),
    ("ot-z-noncontiguous", OT, 'feeds["z"] = np.ascontiguousarray(z, np.float32)\n        feeds["y"]',
     'feeds["z"] = np.asarray(z, np.float32)\n        feeds["y"]', "OT"),
    ("ot-lr-once", OT, "        self.optim.set_learning_rate(float(hyper.lr))",
     '        if not hasattr(self, "_lr"):\n'
     "            self._lr = self.optim.set_learning_rate(float(hyper.lr))", "OT"),
    ("ot-lr-per-run", OT, "self.optim = self.api.Optimizer(path, self.module)",
     "self.optim = self.api.Optimizer(path, self.module)\n        self.optim.set_learning_rate(float(hyper.lr))\n"
     "        self.optim.set_learning_rate = lambda lr: None", "OT"),
    ("ot-grad-accumulates", OT, "self.module.lazy_reset_grad()", "pass", "OT"),
    ("ot-data-loss-swapped", OT, "_, data_loss = self.module(", "data_loss, _ = self.module(", "OT"),
    ("ot-clip-skipped", OT, "if before is not None:", "if False:", "OT"),
    ("ot-clip-unwritten", OT, "self.state.parameters[name] = np.ascontiguousarray(value, np.float32)", "pass", "OT"),
    ("ot-params-view", OT, "dtype=np.float32, copy=True)", "dtype=np.float32, copy=False)", "OT"),
    ("ot-sgd-wd-allowed", OT, "if hyper.momentum != 0.0 or hyper.weight_decay != 0.0:", "if hyper.momentum != 0.0:",
     "OT"),
    ("ot-adamw-change-allowed", OT, "if wanted != self.optim_hyper:", "if False:", "OT"),
    ("ot-adamw-always-baked", OT, 'if self.optimizer == "adamw" and wanted != BAKED_ADAMW:', "if False:", "OT"),
    ("ot-adamw-always-rewritten", OT, 'if self.optimizer == "adamw" and wanted != BAKED_ADAMW:',
     'if self.optimizer == "adamw":', "OT"),
    ("ot-adamw-eps-wd-swapped", OT, "wanted = (hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay)",
     "wanted = (hyper.beta1, hyper.beta2, hyper.weight_decay, hyper.eps)", "OT"),
    ("ot-tmp-one-name", OT, 'f"adamw-{beta1}-{beta2}-{eps}-{weight_decay}.onnx"', '"adamw.onnx"', "OT"),
    ("ot-predict-prefix", OT, 'n[len("logits_") :]', 'n[len("logits") :]', "OT"),
]
_PN, _ON = _E + "test_portable_backend_edges.py", _E + "test_ort_training_edges.py"
AFTER = {
    **dict.fromkeys(["po-threads-one", "po-unknown-optimizer", "po-params-uncast", "po-hyper-stale"], _PN),
    "po-hyper-order": _PN,  # equivalent: the cache key and the feeds are zipped from the same tuple
    "po-z-noncontiguous": _PN,  # equivalent: OrtValue.ortvalue_from_numpy reads a strided float32 array right
    **dict.fromkeys(["ot-manifest-one-file", "ot-unknown-optimizer", "ot-threads-one", "ot-params-uncast",
                     "ot-lr-per-run"], _ON),
    "ot-z-noncontiguous": _ON,  # equivalent: as po-z-noncontiguous, Module's inputs become OrtValues the same way
    "ot-train-mode-dropped": _ON,  # equivalent: Module.__init__ sets training = True (1.19.2)
    "ot-tmp-one-name": _ON,  # equivalent: the Optimizer has read the file before another run writes that name
}
