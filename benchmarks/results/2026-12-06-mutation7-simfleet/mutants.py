"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T = "tests/tools/"


def _tests(*names: str) -> str:
    return " ".join(_T + name + ".py" for name in names)


GROUPS = {
    "SC": _tests("test_evaluated_devices", "test_simulate", "test_personalization")
    + " " + _T + "test_bench_privacy.py::test_smallest_devices_are_the_tenth_with_fewest_training_examples",
    "RP": _tests("test_run_outcome", "test_auto_standardize"),
    "BL": _tests("test_baselines", "test_baseline_decay"),
    "FL": _tests("test_simulate", "test_run_outcome", "test_cli_inputs", "test_cli_errors")
    + " " + _T + "test_personalization.py::test_config_errors_name_the_option",
    "PE": _tests("test_personalization"),
    "ST": "tests/coordinator/test_server.py " + _tests("test_simulate_mqtt"),
    "SH": _tests("test_simulate_scale"),
    "GS": _tests("test_guard_split"),
    "PT": _tests("test_pretrain", "test_output_folders", "test_guard_split"),
    "DE": _tests("test_device_export"),
    "DS": _tests("test_datasets", "test_partition", "test_guard_split"),
}
_S = "tools/simulate/"
SC, BL, FL, PE, ST, SH, GS, RP = (_S + n + ".py" for n in ("scoring", "baselines", "fleet", "personalization",
                                                           "stragglers", "sharing", "guard_split", "report"))
PT, DE, DS = "tools/pretrain.py", "tools/device_export.py", "tools/datasets.py"
MUTANTS = [
    # scoring.py: the round's personalized spread, the smallest devices, new devices
    ("sc-p10-p20", SC, "np.percentile(accuracies, 10)", "np.percentile(accuracies, 20)", "SC"),
    ("sc-personal-ignored", SC,
     'value = d[f"{kind}_personal"] if d[f"{kind}_personal"] is not None else d[f"{kind}_global"]',
     'value = d[f"{kind}_global"]', "SC"),
    ("sc-personal-no-examples-kept", SC, 'if d["examples"] and value is not None:', "if value is not None:", "SC"),
    ("sc-smallest-round", SC, "max(1, int(len(scored) * fraction))", "max(1, round(len(scored) * fraction))", "SC"),
    ("sc-smallest-max-examples-next", SC, "scored[len(chosen) - 1][0]", "scored[min(len(chosen), len(scored) - 1)][0]",
     "SC"),
    ("sc-evaluated-counts-empty", SC, 'sum(1 for n in evaluation.per_device.values() if n["examples"])',
     "len(evaluation.per_device)", "SC"),
    # report.py: the constant-guess warning
    ("rp-guess-margin-2", RP, "accuracy <= share + 0.01", "accuracy <= share + 0.02", "RP"),
    ("rp-guess-one-label", RP, " and share <= 0.99", "", "RP"),
    # baselines.py: the unstable flag, the cosine schedule, the runs
    ("bl-unstable-ge", BL, "return last > UNSTABLE_RATIO * best", "return last >= UNSTABLE_RATIO * best", "BL"),
    ("bl-unstable-no-margin", BL, " and last > best + UNSTABLE_MARGIN", "", "BL"),
    ("bl-cosine-next-epoch", BL, "math.cos(math.pi * epoch / epochs)", "math.cos(math.pi * (epoch + 1) / epochs)",
     "BL"),
    ("bl-decay-keeps-mu", BL, "max_steps=left, mu=0.0)", "max_steps=left)", "BL"),
    ("bl-decay-resets-state", BL, "state, losses = res.opt_state, [", "state, losses = None, [", "BL"),
    ("bl-decay-steps-lt", BL, "if left <= 0:", "if left < 0:", "BL"),
    ("bl-long-run-guard-kept", BL, "return replace(hyper, epochs=epochs, divergence_factor=0.0)",
     "return replace(hyper, epochs=epochs)", "BL"),
    ("bl-diverged-not-listed", BL, "diverged.append(client.client_id)", "pass", "BL"),
    # fleet.py: decisions only
    ("fl-central-no-cpr", FL, "total_epochs * setup.ccfg.clients_per_round // max(1, len(data.clients))",
     "total_epochs // max(1, len(data.clients))", "FL"),
    ("fl-local-epochs-ignored", FL, "cfg.local_epochs or total_epochs", "total_epochs", "FL"),
    ("fl-new-devices-gt", FL, "if held and held >= len(data.clients):", "if held and held > len(data.clients):", "FL"),
    ("fl-finetune-personal-head", FL, '(held or cfg.personalization == "finetune") and spec.head == "personal"',
     'held and spec.head == "personal"', "FL"),
    # personalization.py
    ("pe-head-shared-trains", PE, '{"lora": "frozen", "shared": "frozen", "personal": "frozen"}',
     '{"lora": "frozen", "personal": "frozen"}', "PE"),
    ("pe-full-global-head", PE, 'return remode(spec, _TRAINABLE_TO_SHARED, head="dual", name=name)',
     'return remode(spec, _TRAINABLE_TO_SHARED, head="global", name=name)', "PE"),
    ("pe-none-keeps-head", PE, 'return remode(spec, head="global", name=name)', "return remode(spec, name=name)", "PE"),
    # stragglers.py
    ("st-may-answer-le", ST, "return done and rnd.reports < rnd.wanted", "return done and rnd.reports <= rnd.wanted",
     "ST"),
    ("st-closed-lt", ST, "rnd.closed or rid <= round_id", "rnd.closed or rid < round_id", "ST"),
    ("st-gone-ignored", ST, "d in rnd.answered or d in self._gone", "d in rnd.answered", "ST"),
    # sharing.py
    ("sh-embed-cached", SH, "return super().embed(x, None)", "return super().embed(x, cache_key)", "SH"),
    ("sh-added-model-cached", SH,
     "        super().add_model(model_id, directory)\n        self._models[model_id] = UncachedModel(directory, "
     "expected_model_id=model_id)\n", "        super().add_model(model_id, directory)\n", "SH"),
    # guard_split.py
    ("gs-proxy-kept", GS, "    if cfg.proxy_fraction:\n        guard = np.setdiff1d",
     "    if False:\n        guard = np.setdiff1d", "GS"),
    ("gs-guard-not-held", GS, "    if cfg.guard_fraction:\n        parts.append(guard_positions(cfg, y))\n", "", "GS"),
    ("gs-proxy-stream", GS, "[cfg.seed, 0x6A4D]", "[cfg.seed, 0x5EED]", "GS"),
    # pretrain.py
    ("pt-proxy-max-lt", PT, "0.0 < self.proxy_fraction <= MAX_PROXY_FRACTION",
     "0.0 < self.proxy_fraction < MAX_PROXY_FRACTION", "PT"),
    ("pt-epochs-max-ge", PT, "if self.epochs > MAX_EPOCHS:", "if self.epochs >= MAX_EPOCHS:", "PT"),
    ("pt-proxy-not-excluded", PT, "test_fraction=cfg.test_fraction, exclude=proxy)", "test_fraction=cfg.test_fraction)",
     "PT"),
    ("pt-nan-unchecked", PT, "if not all(np.isfinite(v).all() for v in trained.values()):", "if False:", "PT"),
    ("pt-toml-head-global", PT, 'head = "{base.head}"', 'head = "global"', "PT"),
    # device_export.py
    ("de-model-id-unchecked", DE, "if args.model_id and args.model_id not in ids or not ids:", "if not ids:", "DE"),
    ("de-foreign-unchecked", DE, "    if other:\n", "    if False:\n", "DE"),
    ("de-any-onnx-ours", DE, '.producer_name == "fedge"', '.producer_name != "x"', "DE"),
    ("de-producer-unset", DE, 'model.producer_name = "fedge"', "model.producer_name = model.producer_name", "DE"),
    # datasets.py
    ("ds-exclude-ignored", DS, "if exclude is not None and len(exclude):", "if False:", "DS"),
    ("ds-devices-half-plus-1", DS, "if devices > n // 2:", "if devices > n // 2 + 1:", "DS"),
    ("ds-holdout-floor", DS, "max(int(round(test_fraction * n)), 1)", "max(int(test_fraction * n), 1)", "DS"),
    ("ds-shards-cover-le", DS, "if partition == \"shards\" and num_clients * classes_per_client < len",
     "if partition == \"shards\" and num_clients * classes_per_client <= len", "DS"),
    ("ds-module-not-package", DS, "if spec is None or not spec.submodule_search_locations:", "if spec is None:", "DS"),
]
AFTER = {
    **dict.fromkeys(["sc-p10-p20", "sc-personal-no-examples-kept", "sc-smallest-round"], _tests("test_scoring_edges")),
    "rp-guess-margin-2": _tests("test_constant_guess_edges"),
    **dict.fromkeys(["bl-unstable-ge", "bl-decay-keeps-mu", "bl-long-run-guard-kept"], _tests("test_baseline_edges")),
    **dict.fromkeys(["fl-central-no-cpr", "fl-local-epochs-ignored"], _tests("test_fleet_baseline_epochs")),
    "fl-new-devices-gt": _tests("test_fleet_new_devices_edges"),
    # fl-finetune-personal-head: equivalent (README): personalized_spec gives finetune a global head
    "pe-head-shared-trains": _tests("test_personalization_modes_table"),
    **dict.fromkeys(["st-may-answer-le", "st-closed-lt"], _tests("test_straggler_plan_edges")),
    "sh-added-model-cached": _tests("test_sharing_edges"),
    "gs-proxy-stream": _tests("test_guard_split_stream"),
    **dict.fromkeys(["pt-proxy-max-lt", "pt-epochs-max-ge", "pt-nan-unchecked"], _tests("test_pretrain_edges")),
    **dict.fromkeys(["de-model-id-unchecked", "de-foreign-unchecked"], _tests("test_device_export_edges")),
    **dict.fromkeys(["ds-devices-half-plus-1", "ds-shards-cover-le", "ds-module-not-package"],
                    _tests("test_datasets_edges")),
}
