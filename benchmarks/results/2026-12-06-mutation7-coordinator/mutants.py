"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_C = "tests/coordinator/"


def _tests(*names: str) -> str:
    return " ".join(name if name.startswith("tests/") else _C + name + ".py" for name in names)


GROUPS = {
    "SV": _tests(
        "test_server", "test_hostile_messages", "test_restart", "test_pace", "test_checkin_limit", "test_metrics"
    ),
    "LO": _tests(
        "test_backoff",
        "test_waiting",
        "test_hostile_messages",
        "test_group_commit",
        "test_close_without_link",
        "test_dp_empty_draw",
    ),
    "SE": _tests(
        "test_service_unavailable",
        "test_task_deadline",
        "test_dp_implied",
        "tests/hardware/test_service.py",
        "tests/test_config_key_paths.py",
    ),
    "RG": _tests("test_server", "test_metrics", "test_waiting", "test_backoff", "test_pace", "test_restart"),
    "AR": _tests("test_artifacts", "test_link_edges"),
    "RO": _tests(
        "test_store_rows_damaged",
        "test_store_records_damaged",
        "test_restart",
        "test_restart_edges",
        "test_payload_log",
    ),
    "DP": _tests("test_dp_empty_draw", "test_dp_key_forgotten", "test_dp_poisson"),
    "TX": _tests("test_store", "test_group_commit"),
    "CF": _tests(
        "test_config_counts",
        "test_selection_edges",
        "test_dp_implied",
        "test_strategy_edges",
        "test_checkin_limit",
        "tests/test_config_fuzz.py",
        "tests/test_config_key_paths.py",
    ),
}
_K = "coordinator/"
SV, LO, SE, RG = _K + "server.py", _K + "loop.py", _K + "service.py", _K + "registry.py"
AR, RC, RR, SR = _K + "artifacts.py", _K + "row_check.py", _K + "record_rows.py", _K + "store_rows.py"
ST, TX, RS, NR, CF = (
    _K + "stored.py",
    _K + "sqlite_tx.py",
    _K + "round_shell.py",
    _K + "noise_round.py",
    _K + "config.py",
)
MUTANTS = [
    # server.py: what one message does
    ("sv-checkin-not-mine", SV, 'channel == "checkin" and mine:', 'channel == "checkin":', "SV"),
    (
        "sv-online-status-offline",
        SV,
        "if not report.online and report.device_id in self.registry:",
        "if report.device_id in self.registry:",
        "SV",
    ),
    ("sv-decline-stored-unexpected", SV, "if rnd.machine.expects(decline.device_id):", "if True:", "SV"),
    # loop.py: no one message stops it; rounds spaced out
    ("lo-internal-one-reason", LO, 'reason = f"internal:{type(exc).__name__}"', 'reason = "internal"', "LO"),
    (
        "lo-leadership-dropped",
        LO,
        "except (TransportError, GroupCommitFailed, LeadershipError):",
        "except (TransportError, GroupCommitFailed):",
        "LO",
    ),
    (
        "lo-abandoned-no-reset",
        LO,
        "self.abandoned_in_a_row = 0 if record.committed else",
        "self.abandoned_in_a_row = self.abandoned_in_a_row if record.committed else",
        "LO",
    ),
    ("lo-pause-ignored", LO, "max(self.round_pause_s, wait)", "wait", "LO"),
    ("lo-min-devices-le", LO, "if eligible < self.min_devices or", "if eligible <= self.min_devices or", "LO"),
    ("lo-exhausted-wait-stops", LO, 'if c.config.privacy.on_exhausted == "stop":', "if True:", "LO"),
    # service.py
    (
        "se-link-inbound-ignored",
        SE,
        "per_sender = min(per_sender, broker.max_inbound_bytes)",
        "per_sender = broker.max_inbound_bytes",
        "SE",
    ),
    (
        "se-should-stop-gt",
        SE,
        "return bool(target) and coordinator.state.version >= target",
        "return bool(target) and coordinator.state.version > target",
        "SE",
    ),
    (
        "se-done-already-gt",
        SE,
        "coordinator.state.version >= cfg.service.rounds:",
        "coordinator.state.version > cfg.service.rounds:",
        "SE",
    ),
    ("se-exit-privacy-0", SE, "        status = EXIT_PRIVACY_BUDGET\n", "        status = 0\n", "SE"),
    # registry.py
    ("rg-parked-eligible", RG, "if d.eligible and not d.parked]", "if d.eligible]", "RG"),
    (
        "rg-change-not-saved",
        RG,
        "if old is None or (old.eligible, old.reason, old.num_examples) != (eligible, reason, num_examples):",
        "if old is None or (old.eligible, old.reason) != (eligible, reason):",
        "RG",
    ),
    ("rg-eligible-count-twice", RG, "int(eligible) - int(old is not None and old.eligible)", "int(eligible)", "RG"),
    ("rg-restore-age-dropped", RG, "now - max(0.0, wall - d.last_seen_wall)", "now", "RG"),
    ("rg-last-will-forgets-checkin", RG, "checkin = old.checkin if old else None", "checkin = None", "RG"),
    # artifacts.py: which model the fleet is sent
    ("ar-rate-le", AR, "now - last < self.min_interval_s:", "now - last <= self.min_interval_s:", "AR"),
    (
        "ar-names-repeat",
        AR,
        "list(dict.fromkeys(request.files) if request.files",
        "list(request.files if request.files",
        "AR",
    ),
    ("ar-prune-drops-live", AR, "{d: t for d, t in self._last.items() if now - t < self.min_interval_s}", "{}", "AR"),
    ("ar-model-id-unchecked", AR, "if server.model_id != model_id:", "if not model_id:", "AR"),
    # row_check.py, record_rows.py, store_rows.py: every row read back is checked
    (
        "rc-count-minus-one",
        RC,
        "not isinstance(value, bool) and value >= 0\n",
        "not isinstance(value, bool) and value >= -1\n",
        "RO",
    ),
    ("rc-finite-nan", RC, "FINITE: _number(value) and math.isfinite(value),", "FINITE: _number(value),", "RO"),
    (
        "rc-norm-negative",
        RC,
        "(_number(value) and value >= 0 and math.isfinite(value))",
        "(_number(value) and math.isfinite(value))",
        "RO",
    ),
    (
        "rr-unknown-field",
        RR,
        'raise corrupt(path, table, "record", text, f"{kind} (it has no field',
        'continue  # (f"{kind} (it has no field',
        "RO",
    ),
    ("rr-none-any", RR, 'return value is None or _fits(value, kind[: -len(" | None")])', "return True", "RO"),
    ("sr-quorum-over-target", SR, "if quorum > target:", "if quorum > target + 1:", "RO"),
    (
        "sr-target-over-selected",
        SR,
        "if picked and target > len(picked):",
        "if picked and target > len(picked) + 1:",
        "RO",
    ),
    (
        "sr-seq-first-pair",
        SR,
        "if i and event.seq == events[i - 1].seq:",
        "if i > 1 and event.seq == events[i - 1].seq:",
        "RO",
    ),
    ("sr-extra-tasks", SR, "if set(asked) != set(picked) or", "if not set(picked) <= set(asked) or", "RO"),
    (
        "sr-data-longer",
        SR,
        "if len(data) != int(np.prod(dims, dtype=object)) * dt.itemsize:",
        "if len(data) < int(np.prod(dims, dtype=object)) * dt.itemsize:",
        "RO",
    ),
    (
        "sr-noise-round-any-pair",
        SR,
        "(picked or privacy is None or (target, quorum) != (0, 0))",
        "(picked or privacy is None)",
        "RO",
    ),
    # stored.py, sqlite_tx.py, round_shell.py, noise_round.py
    ("st-noise-key-kept", ST, 'OPEN_ROUND_SECRETS = ("noise_key",)', "OPEN_ROUND_SECRETS = ()", "DP"),
    ("tx-deferred", TX, 'db.execute("BEGIN IMMEDIATE")', 'db.execute("BEGIN")', "TX"),
    ("tx-no-rollback", TX, '        db.execute("ROLLBACK")\n', "", "TX"),
    ("rs-no-resend", RS, "self.outbound.task(rnd, device_id, now)  # it declines", "pass  # it declines", "SV"),
    ("nr-resumed-any-sampling", NR, 'if plan is None or plan.sampling != "poisson":', "if plan is None:", "DP"),
    ("nr-no-carry", NR, "    state = replace(state, extra={**state.extra, **rnd.aggregator.carry()})\n", "", "DP"),
    (
        "nr-abandon-uncharged",
        NR,
        "c.store.abandon_round(round_id, asdict(record), c.clock.wall(), rnd.charge())",
        "c.store.abandon_round(round_id, asdict(record), c.clock.wall())",
        "DP",
    ),
    # config.py: ranges and cross-field refusals
    (
        "cf-min-reports-ge",
        CF,
        "self.min_reports > self.clients_per_round",
        "self.min_reports >= self.clients_per_round",
        "CF",
    ),
    ("cf-quorum-floor", CF, "max(1, -(-self.clients_per_round // 2))", "max(1, self.clients_per_round // 2)", "CF"),
    ("cf-max-seed-plus1", CF, "MAX_SEED = 2**42 - 1", "MAX_SEED = 2**42", "CF"),
    (
        "cf-mechanism-implied-one-mode",
        CF,
        'if len(modes) == 2 and "mechanism"',
        'if len(modes) >= 1 and "mechanism"',
        "CF",
    ),
    (
        "cf-wire-mu-unchecked",
        CF,
        'hyper = replace(self.hyper, mu=self.prox_mu) if self.strategy == "fedprox" else self.hyper',
        "hyper = self.hyper",
        "CF",
    ),
]
AFTER = {
    "sv-online-status-offline": _tests("test_server_decisions"),
    **dict.fromkeys(
        [
            "lo-leadership-dropped",
            "lo-abandoned-no-reset",
            "lo-pause-ignored",
            "lo-min-devices-le",
            "lo-exhausted-wait-stops",
        ],
        _tests("test_loop_decisions"),
    ),
    **dict.fromkeys(
        ["se-link-inbound-ignored", "se-should-stop-gt", "se-done-already-gt", "se-exit-privacy-0"],
        _tests("test_service_exits"),
    ),
    **dict.fromkeys(
        ["rg-change-not-saved", "rg-eligible-count-twice", "rg-restore-age-dropped", "rg-last-will-forgets-checkin"],
        _tests("test_registry_edges"),
    ),
    "ar-prune-drops-live": _tests("test_artifacts_edges"),
    **dict.fromkeys(
        [
            "rc-norm-negative",
            "sr-quorum-over-target",
            "sr-target-over-selected",
            "sr-extra-tasks",
            "sr-data-longer",
            "sr-noise-round-any-pair",
        ],
        _tests("test_rows_at_limits"),
    ),
    "tx-deferred": _tests("test_sqlite_tx"),
    **dict.fromkeys(
        ["nr-resumed-any-sampling", "nr-no-carry", "nr-abandon-uncharged"], _tests("test_noise_round_edges")
    ),
    **dict.fromkeys(
        ["cf-min-reports-ge", "cf-quorum-floor", "cf-max-seed-plus1", "cf-wire-mu-unchecked"],
        _tests("test_config_limits"),
    ),
}
