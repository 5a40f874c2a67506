"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T = "tests/tools/"


def _tests(*names: str) -> str:
    return " ".join(_T + name + ".py" for name in names)


GROUPS = {
    "AD": _tests("test_adversary", "test_simulate_attacks", "test_attack_edges"),
    "CO": _tests("test_attack_edges", "test_simulate_attacks"),
    "MA": _tests("test_adversary", "test_simulate_attacks")
    + " " + _T + "test_cli_errors.py::test_an_attack_past_float32_is_sent_as_its_largest",
    "PR": "tests/edge_runtime/test_profiles.py " + _tests("test_simulate_mqtt"),
    "FC": _tests("test_cli_inputs") + " " + _T + "test_cli_errors.py::test_bad_argument_is_one_line",
    "WR": _tests("test_run_outcome", "test_auto_pixels", "test_simulate_scale"),
    "MC": _tests("test_run_outcome", "test_baseline_decay"),
    "CF": _tests("test_sim_config", "test_cli_inputs", "test_guard_split")
    + " " + _T + "test_cli_errors.py::test_bad_argument_is_one_line",
    "CA": _tests("test_cli_inputs", "test_cli_fuzz", "test_shard_users"),
}
_S = "tools/simulate/"
AD, CO, MA, PR, FC, WR, MC, CF = (_S + n + ".py" for n in ("adversary", "conspiracy", "malicious", "profiles",
                                                           "flag_checks", "what_ran", "model_choice", "config"))
CA = "tools/cli_args.py"
MUTANTS = [
    # adversary.py: the spec's ranges, who attacks, the trigger, each attack's rewrite, the claim
    ("ad-fraction-le-1", AD, "if not 0 < self.fraction < 1:", "if not 0 < self.fraction <= 1:", "AD"),
    ("ad-scale-inf", AD, "if not (self.scale >= 0 and math.isfinite(self.scale)):", "if not self.scale >= 0:", "AD"),
    ("ad-alie-one-report", AD, 'spec.name == "alie" and per_round < 2:', 'spec.name == "alie" and per_round < 1:',
     "AD"),
    ("ad-colluding-mqtt", AD, '    if transport != "memory":\n', "    if False:\n", "AD"),
    ("ad-count-floor", AD, "count = max(1, round(fraction * len(ids)))", "count = max(1, int(fraction * len(ids)))",
     "AD"),
    ("ad-count-none", AD, "count = max(1, round(fraction * len(ids)))", "count = max(0, round(fraction * len(ids)))",
     "AD"),
    ("ad-trigger-side-8", AD, "max(2, shape[0] // 7)", "max(2, shape[0] // 8)", "AD"),
    ("ad-trigger-flat-min-1", AD, "max(2, math.isqrt(int(np.prod(shape))) // 7)",
     "max(1, math.isqrt(int(np.prod(shape))) // 7)", "AD"),
    ("ad-trigger-flat-value-1", AD,
     "value = max(float(np.max(c.x_train)) for c in data.clients if np.size(c.x_train))", "value = 1.0", "AD"),
    ("ad-sign-flip-scale-ignored", AD, "attacks.sign_flip(x, spec.scale or 1.0)", "attacks.sign_flip(x, 1.0)", "AD"),
    ("ad-scale-ignored", AD, "return x * spec.scale if spec.scale else attacks.scale_replace(x, n, eta)",
     "return attacks.scale_replace(x, n, eta)", "AD"),
    ("ad-alie-m-half", AD, "(n - 1) // 2)))", "n // 2)))", "AD"),
    ("ad-alie-m-all", AD, "max(1, min(collusion.attackers(round_id), (n - 1) // 2))",
     "max(1, collusion.attackers(round_id))", "AD"),
    ("ad-min-sum-is-min-max", AD, "attacks.min_sum(known, spec.perturbation)[0]",
     "attacks.min_max(known, spec.perturbation)[0]", "AD"),
    ("ad-deposit-honest", AD, "collusion.deposit(round_id, device_id, x, attacker=True)",
     "collusion.deposit(round_id, device_id, x, attacker=False)", "AD"),
    ("ad-step-eta-unchecked", AD, "if n < 1 or not eta > 0:", "if n < 1:", "AD"),
    ("ad-poison-true-claim", AD, '    if spec.name == "poison":\n        return MAX_EXAMPLES',
     '    if spec.name == "poison":\n        return true_examples', "AD"),
    ("ad-huge-uncapped", AD, "int(min(attacks.huge_weight(true_examples, spec.weight_factor), MAX_EXAMPLES))",
     "int(attacks.huge_weight(true_examples, spec.weight_factor))", "AD"),
    # conspiracy.py: held updates, rewritten on release, re-publishes
    ("co-not-rewritten", CO, "            if update.device_id in self.attackers:\n", "            if False:\n", "CO"),
    ("co-republish-honest", CO, "uplink.inner.publish(topic, self.sent[update.update_id], qos=1)",
     "uplink.inner.publish(topic, payload, qos=1)", "CO"),
    ("co-deposit-twice", CO, "if update.update_id not in self.queue:", "if True:", "CO"),
    ("co-all-attackers", CO, "attacker=update.device_id in self.attackers)", "attacker=True)", "CO"),
    ("co-sent-forgotten", CO, "if len(self.sent) > 4096:", "if len(self.sent) > 0:", "CO"),
    ("co-release-false", CO, "return bool(queue)", "return False", "CO"),
    # malicious.py: the rewrite of the kept update
    ("ma-no-f32-clip", MA, "mal = np.clip(mal, -F32_MAX, F32_MAX)", "mal = mal", "MA"),
    ("ma-clip-norm-kept", MA, "replace(compression, clip_norm=0.0, error_feedback=False)",
     "replace(compression, error_feedback=False)", "MA"),
    ("ma-claim-honest", MA, "num_examples=claimed_examples(spec, update.num_examples)",
     "num_examples=update.num_examples", "MA"),
    ("ma-rng-shared", MA, "[update.round_id, zlib.crc32(update.device_id.encode())]", "[update.round_id, 0]", "MA"),
    ("ma-kept-honest", MA, "self._journal.record(store, self._rewrite(update), saves, meta)",
     "self._journal.record(store, update, saves, meta)", "MA"),
    ("ma-reply-honest", MA, "return rewrite(reply) if isinstance(reply, Update) else reply", "return reply", "MA"),
    # profiles.py
    ("pr-dropout-le-1", PR, "if not 0 <= self.dropout_probability < 1:", "if not 0 <= self.dropout_probability <= 1:",
     "PR"),
    ("pr-speed-inf", PR, "if not (math.isfinite(self.compute_speed) and self.compute_speed > 0):",
     "if not self.compute_speed > 0:", "PR"),
    ("pr-name-not-stem", PR, 'data.setdefault("name", path.stem)', 'data.setdefault("name", "reference")', "PR"),
    ("pr-slash-is-name", PR, 'if text.endswith(".toml") or "/" in text or Path(text).is_file():',
     'if text.endswith(".toml") or Path(text).is_file():', "PR"),
    # flag_checks.py
    ("fc-omniscient-alone", FC, "(cfg.attackers != SimConfig.attackers or cfg.omniscient)",
     "cfg.attackers != SimConfig.attackers", "FC"),
    ("fc-momentum-fedavg", FC, '"server_momentum": ("fedavgm",)', '"server_momentum": ("fedavgm", "fedavg")', "FC"),
    ("fc-tau-unchecked", FC, '"server_beta2": ADAPTIVE, "server_tau": ADAPTIVE}', '"server_beta2": ADAPTIVE}', "FC"),
    ("fc-head-from-global", FC, 'if cfg.personalization == "none" and', "if False and", "FC"),
    ("fc-baseline-epochs", FC, 'is not None and baseline not in cfg.baselines:', "is not None and False:", "FC"),
    # what_ran.py
    ("wr-new-not-counted", WR, "everyone = data.clients + setup.new_clients", "everyone = data.clients", "WR"),
    ("wr-least-common", WR, "np.bincount(labels.astype(np.int64)).max()", "np.bincount(labels.astype(np.int64)).min()",
     "WR"),
    ("wr-beta-always", WR, "beta=setup.cfg.split_beta if setup.cfg.synthetic else None",
     "beta=setup.cfg.split_beta", "WR"),
    # model_choice.py
    ("mc-folder-is-shipped", MC, "shipped=not cfg.data_dir)", "shipped=True)", "MC"),
    ("mc-classes-ge", MC, "if data.num_classes > spec.num_classes:", "if data.num_classes >= spec.num_classes:", "MC"),
    ("mc-new-unchecked", MC, '(("training", training), ("--new-devices", new))', '(("training", training),)', "MC"),
    # config.py
    ("cf-proxy-lt-half", CF, "if not 0.0 <= self.proxy_fraction <= 0.5 or",
     "if not 0.0 <= self.proxy_fraction < 0.5 or", "CF"),
    ("cf-guard-lt-half", CF, "if not 0.0 <= self.guard_fraction <= 0.5 or",
     "if not 0.0 <= self.guard_fraction < 0.5 or", "CF"),
    ("cf-new-devices-gt", CF, "self.new_devices >= self.devices", "self.new_devices > self.devices", "CF"),
    ("cf-count-ge-cap", CF, "(getattr(self, name) or 0) > MAX_COUNT:", "(getattr(self, name) or 0) >= MAX_COUNT:",
     "CF"),
    ("cf-attack-scale-alone", CF, "elif self.attack_scale:", "elif False:", "CF"),
    ("cf-synthetic-inf", CF, "0 <= self.split_alpha < math.inf and", "0 <= self.split_alpha and", "CF"),
    ("cf-guard-feature", CF, '(self.standardize or self.partition == "feature")', "self.standardize", "CF"),
    ("cf-ort-momentum", CF, 'if hyper.optimizer != "sgd" or backend == "ort-training":',
     'if hyper.optimizer != "sgd":', "CF"),
    ("cf-epochs-zero", CF, "getattr(self, name) < 1:", "getattr(self, name) < 0:", "CF"),
    # cli_args.py
    ("ca-name-ge-255", CA, 'split(b"/")) > _MAX_NAME_BYTES:', 'split(b"/")) >= _MAX_NAME_BYTES:', "CA"),
    ("ca-path-ge-4095", CA, "len(raw) > _MAX_PATH_BYTES", "len(raw) >= _MAX_PATH_BYTES", "CA"),
    ("ca-int-high-lt", CA, "if not low <= value <= high:", "if not low <= value < high:", "CA"),
    ("ca-seconds-zero", CA, "if not 0 < value <= MAX_SECONDS:", "if not 0 <= value <= MAX_SECONDS:", "CA"),
    ("ca-names-unstripped", CA, "if not any(name.strip() for name in", "if not any(name for name in", "CA"),
    ("ca-list-first-only", CA, 'for item in text.split(","):\n            one(item)', 'one(text.split(",")[0])', "CA"),
]
AFTER = {
    **dict.fromkeys(["ad-count-floor", "ad-trigger-side-8", "ad-sign-flip-scale-ignored", "ad-alie-m-half",
                     "ad-min-sum-is-min-max", "ad-step-eta-unchecked", "ad-poison-true-claim", "ad-huge-uncapped"],
                    _tests("test_adversary_edges")),
    # co-deposit-twice: equivalent (README): a held update's re-publish deposits the same delta under the same key
    **dict.fromkeys(["co-republish-honest", "ma-clip-norm-kept", "ma-rng-shared", "ma-reply-honest"],
                    _tests("test_upload_rewrite_edges")),
    **dict.fromkeys(["pr-speed-inf", "pr-slash-is-name"], "tests/edge_runtime/test_profile_edges.py"),
    **dict.fromkeys(["fc-momentum-fedavg", "fc-tau-unchecked"], _tests("test_flag_checks_table")),
    **dict.fromkeys(["wr-new-not-counted", "wr-beta-always"], _tests("test_what_ran_edges")),
    **dict.fromkeys(["mc-folder-is-shipped", "mc-new-unchecked"], _tests("test_model_choice_edges")),
    **dict.fromkeys(["cf-proxy-lt-half", "cf-guard-lt-half", "cf-new-devices-gt", "cf-count-ge-cap",
                     "cf-attack-scale-alone", "cf-ort-momentum", "cf-epochs-zero"], _tests("test_sim_config_edges")),
    **dict.fromkeys(["ca-name-ge-255", "ca-path-ge-4095", "ca-int-high-lt", "ca-names-unstripped"],
                    _tests("test_cli_args_edges")),
}
