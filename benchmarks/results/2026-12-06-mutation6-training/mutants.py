"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E, _C = "tests/edge_runtime/", "tests/coordinator/"
GROUPS = {
    "TR": " ".join(_E + f for f in ("test_training_guards.py", "test_adamw_eps.py", "test_fedprox_gradient.py",
                                    "test_personalize.py")),
    "LT": " ".join(_E + f for f in ("test_training_guards.py", "test_scaffold_device.py", "test_hostile_numbers.py",
                                    "test_task_time_limit.py")),
    "PZ": _E + "test_personalize.py",
    "PP": _E + "test_postprocess.py " + _C + "test_update_fits.py",
    "SC": _E + "test_scores.py " + _C + "test_evaluation.py",
    "GU": _C + "test_weights_and_guard.py " + _C + "test_guard_set_pixels.py",
    "EV": _C + "test_evaluation.py",
    "UF": _C + "test_update_fits.py",
    "AD": _C + "test_admission.py " + _C + "test_async_boundaries.py",
    "PM": "tests/tools/test_personalization.py",
}
TB, NR, LT = "edge_runtime/trainer/base.py", "edge_runtime/trainer/numpy_ref.py", "edge_runtime/local_training.py"
PZ, PP, SC = "edge_runtime/personalize.py", "edge_runtime/postprocess.py", "edge_runtime/scores.py"
GU, HO, EV = "coordinator/guard.py", "coordinator/holdout.py", "coordinator/evaluation.py"
UF, AD, PM = "coordinator/update_fits.py", "coordinator/admission.py", "tools/simulate/personalization.py"
MUTANTS = [
    # trainer/base.py: the step bound, clip_step, the fresh optimizer state
    ("tb-bound-momentum-le", TB, "not 0 <= hyper.momentum < 1:", "not 0 <= hyper.momentum <= 1:", "TR"),
    ("tb-bound-no-momentum", TB, "hyper.max_grad_norm / (1 - hyper.momentum)", "hyper.max_grad_norm", "TR"),
    ("tb-clip-le", TB, "or norm <= max_norm:", "or norm < max_norm:", "TR"),
    ("tb-clip-nonfinite", TB, "or not math.isfinite(norm) or", "or", "TR"),
    ("tb-adamw-step-1", TB, 'state["step"] = np.zeros((), np.float32)', 'state["step"] = np.ones((), np.float32)',
     "TR"),
    # trainer/numpy_ref.py: the reference optimizer, the prox and correction terms, the clip
    ("nr-sgd-no-wd", NR, "g = g + hyper.weight_decay * p", "g = g", "TR"),
    ("nr-adam-no-bc2", NR, "np.sqrt(v) / np.sqrt(bc2)", "np.sqrt(v)", "TR"),
    ("nr-no-correction", NR, "grads[name] = grads[name] + self.correction[name]", "grads[name] = grads[name]", "LT"),
    ("nr-prox-sign", NR, "(self.params[name] - self.anchor[name])", "(self.anchor[name] - self.params[name])", "TR"),
    # local_training.py: the divergence rule, the guard settings, what a run returns
    ("lt-floor-half", LT, "LOSS_FLOOR = 1.0", "LOSS_FLOOR = 0.5", "LT"),
    ("lt-div-ge", LT, "and loss > hyper.divergence_factor", "and loss >= hyper.divergence_factor", "LT"),
    ("lt-first-is-last", LT, "first = loss if first is None else first", "first = loss", "LT"),
    ("lt-norm-zero-refused", LT, "hyper.max_grad_norm >= 0)", "hyper.max_grad_norm > 0)", "LT"),
    ("lt-factor-1-taken", LT, "hyper.divergence_factor > 1)", "hyper.divergence_factor >= 1)", "LT"),
    ("lt-param-check-cut", LT, "if not np.all(np.isfinite(value)):\n            raise Diverged(f\"param",
     "if False:\n            raise Diverged(f\"param", "LT"),
    ("lt-max-steps-gt", LT, "steps >= hyper.max_steps:\n                break", "steps > hyper.max_steps:\n"
     "                break", "LT"),
    ("lt-personal-not-new", LT, "new_personal = {k: params[k] for k in personal}",
     "new_personal = {k: personal[k] for k in personal}", "LT"),
    ("lt-epoch-mean-off", LT, "means.append(total / count)", "means.append(total / (count + 1))", "LT"),
    ("lt-scaffold-momentum-le", LT, "if not 0 <= hyper.momentum < 1:\n        raise ConfigError(f\"SCAFFOLD",
     "if not 0 <= hyper.momentum <= 1:\n        raise ConfigError(f\"SCAFFOLD", "LT"),
    # personalize.py: the personal head's start, head tuning
    ("pz-start-no-shape", PZ, " and np.shape(shared[fleets]) == start[mine].shape", "", "PZ"),
    ("pz-state-not-carried", PZ, "state = {**fresh, **{k: new_state[k] for k in carried}}", "state = dict(fresh)",
     "PZ"),
    ("pz-prox-kept", PZ, "replace(hyper, mu=0.0, max_grad_norm=0.0)", "replace(hyper, max_grad_norm=0.0)", "PZ"),
    # postprocess.py: the chain's order, the clip's report
    ("pp-norm-not-kept", PP, "norm_before_clip=norm)", "norm_before_clip=None)", "PP"),
    # scores.py
    ("sc-nonfinite-rows-count", SC, "== y) & finite))", "== y)))", "SC"),
    ("sc-no-shift", SC, "        z = z - z.max(axis=1, keepdims=True)\n", "", "SC"),
    ("sc-empty-not-none", SC, "if logits is None or not len(y):\n        return None\n    finite",
     "if logits is None:\n        return None\n    finite", "SC"),
    # guard.py and holdout.py: the model guard
    ("gu-extra-unchecked", GU, 'groups = {"params": params, **(extra or {})}', 'groups = {"params": params}', "GU"),
    ("gu-holdout-lt", GU, "candidate_loss <= max_ratio * current_loss", "candidate_loss < max_ratio * current_loss",
     "GU"),
    ("gu-holdout-overrides", GU, "if fault is None and holdout is not None:", "if holdout is not None:", "GU"),
    ("gu-mce-no-shift", GU, "    z = z - z.max(axis=1, keepdims=True)\n", "", "GU"),
    ("ho-cache-any-version", HO, "if self._scored is None or self._scored[0] != version:",
     "if self._scored is None:", "GU"),
    ("ho-lengths-unchecked", HO, 'or len(data["x"]) != len(data["y"]) ', "", "GU"),
    # evaluation.py
    ("ev-every-ignored", EV, "if not every or version % every or not candidates:", "if not every or not candidates:",
     "EV"),
    ("ev-deadline-gt", EV, "now >= self.run.deadline", "now > self.run.deadline", "EV"),
    ("ev-version-unchecked", EV, " or report.model_version != run.model_version", "", "EV"),
    ("ev-devices-0-none", EV, "count = self.config.devices or len(candidates)", "count = self.config.devices", "EV"),
    # update_fits.py
    ("uf-lt-le", UF, "if config.max_update_bytes < need:", "if config.max_update_bytes <= need:", "UF"),
    ("uf-secagg-dense-skipped", UF, "if config.secure_aggregation.enabled and len(payload)",
     "if False and len(payload)", "UF"),
    # admission.py: a device's reported numbers, declines, the replay
    ("ad-loss-le-cap", AD, "0 <= loss < 1e12", "0 <= loss <= 1e12", "AD"),
    ("ad-norm-zero-dropped", AD, "math.isfinite(norm) and norm >= 0", "math.isfinite(norm) and norm > 0", "AD"),
    ("ad-replay-no-digest", AD, "    check_stored_digest(stored.payload, stored.control, stored.digest, f\"",
     "    (stored.payload, stored.control, stored.digest, f\"", "AD"),
    ("ad-replay-norm-lost", AD, "reported_norm=stored.reported_norm)", "reported_norm=None)", "AD"),
    # tools/simulate/personalization.py: the modes
    ("pm-head-global", PM, 'remode(spec, _TRAINABLE_TO_FROZEN, head="dual"', 'remode(spec, _TRAINABLE_TO_FROZEN, '
     'head="global"', "PM"),
    ("pm-finetune-dual", PM, 'remode(spec, _TRAINABLE_TO_SHARED, head="global"',
     'remode(spec, _TRAINABLE_TO_SHARED, head="dual"', "PM"),
    ("pm-none-as-given", PM, 'return remode(spec, head="global", name=name)', "return spec", "PM"),
]
_T, _P, _G = _E + "test_training_guard_edges.py", _E + "test_personalize_edges.py", _C + "test_model_guard_edges.py"
AFTER = {
    **dict.fromkeys(["tb-bound-momentum-le", "tb-clip-nonfinite", "nr-sgd-no-wd", "lt-div-ge", "lt-first-is-last",
                     "lt-factor-1-taken", "lt-param-check-cut", "lt-max-steps-gt", "lt-scaffold-momentum-le"], _T),
    **dict.fromkeys(["pz-prox-kept", "pp-norm-not-kept", "sc-no-shift"], _P),
    **dict.fromkeys(["gu-holdout-lt", "gu-holdout-overrides", "gu-mce-no-shift", "ho-cache-any-version",
                     "ho-lengths-unchecked", "ev-every-ignored", "ev-deadline-gt", "ev-version-unchecked",
                     "uf-secagg-dense-skipped", "ad-loss-le-cap", "ad-norm-zero-dropped", "ad-replay-no-digest",
                     "ad-replay-norm-lost"], _G),
}
