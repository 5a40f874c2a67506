"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T = "tests/coordinator/"
_E = "tests/edge_runtime/"
GROUPS = {
    "RD": (
        _T + "test_rounds.py " + _T + "test_round_stages.py " + _T + "test_keep_rounds_oracle.py "
        + _T + "test_pace.py " + _T + "test_phase_fuzz.py " + _T + "test_sign_split_rounds.py"
    ),
    "SA": (
        _T + "test_sampling.py " + _T + "test_dp_poisson.py " + _T + "test_dp_empty_draw.py " + _T + "test_dp_rounds.py"
    ),
    "BO": _T + "test_backoff.py " + _T + "test_pace.py " + _T + "test_phase_fuzz.py",
    "PA": _T + "test_pace.py " + _T + "test_phase_fuzz.py",
    "CL": _T + "test_checkin_limit.py " + _T + "test_phase_fuzz.py",
    "LI": _T + "test_config_counts.py " + _T + "test_sign_split_edges.py",
    "SL": "tests/secagg/test_fleet_secagg_hostile.py",
    "EL": (
        _E + "test_eligibility.py " + _E + "test_probes.py " + _E + "test_profiles.py "
        + _E + "test_abort_mid_training.py"
    ),
    "WL": (
        _E + "test_task_time_limit.py " + _E + "test_hostile_coordinator.py " + _E + "test_uplink_backlog.py"
    ),
}
RD, SA, BO, PA = "coordinator/rounds.py", "coordinator/sampling.py", "coordinator/backoff.py", "coordinator/pace.py"
CL, LI, SL = "coordinator/checkin_limit.py", "coordinator/limits.py", "coordinator/sidelined.py"
EL, EM, WL = "edge_runtime/eligibility.py", "edge_runtime/eligibility_monitor.py", "edge_runtime/work_limits.py"
MUTANTS = [
    # rounds.py: target, quorum, deadline, reachability, stages, reasons
    ("rd-target-gt", RD, "if len(replies[m.stage]) >= m.target:", "if len(replies[m.stage]) > m.target:", "RD"),
    ("rd-deadline-gt", RD, "and not m.stage_full and now >= m.deadline:", "and not m.stage_full and now > m.deadline:",
     "RD"),
    ("rd-quorum-gt", RD, "        if n >= m.quorum:\n", "        if n > m.quorum:\n", "RD"),
    ("rd-reach-le", RD, "if n + m.outstanding < m.quorum:", "if n + m.outstanding <= m.quorum:", "RD"),
    ("rd-reach-no-outstanding", RD, "if n + m.outstanding < m.quorum:", "if n < m.quorum:", "RD"),
    ("rd-all-answered-gt", RD, "if m.outstanding == 0 and n >= m.quorum:", "if m.outstanding == 0 and n > m.quorum:",
     "RD"),
    ("rd-all-answered-le1", RD, "if m.outstanding == 0 and n >= m.quorum:", "if m.outstanding <= 1 and n >= m.quorum:",
     "RD"),
    ("rd-outstanding-no-declined", RD, "return sum(1 for d in self.asked if d not in declined)",
     "return sum(1 for d in self.asked)", "RD"),
    ("rd-start-quorum0", RD, "if not 1 <= first.quorum <= first.target <= len(selected):",
     "if not 0 <= first.quorum <= first.target <= len(selected):", "RD"),
    ("rd-start-target-lt-selected", RD, "if not 1 <= first.quorum <= first.target <= len(selected):",
     "if not 1 <= first.quorum <= first.target < len(selected):", "RD"),
    ("rd-later-quorum0", RD, "        if not 1 <= lim.quorum <= lim.target:",
     "        if not 0 <= lim.quorum <= lim.target:", "RD"),
    ("rd-window-ge0", RD, "if any(not lim.window_s > 0 for lim in limits[1:]):",
     "if any(not lim.window_s >= 0 for lim in limits[1:]):", "RD"),
    ("rd-advance-no-cap", RD, "target=min(m.limits[nxt].target, max(1, len(asked)))",
     "target=m.limits[nxt].target", "RD"),
    ("rd-advance-cap-max0", RD, "target=min(m.limits[nxt].target, max(1, len(asked)))",
     "target=min(m.limits[nxt].target, len(asked))", "RD"),
    ("rd-advance-reach-le", RD, "if len(asked) < lim.quorum:", "if len(asked) <= lim.quorum:", "RD"),
    ("rd-advance-deadline-old", RD, "deadline=now + lim.window_s,", "deadline=m.deadline + lim.window_s,", "RD"),
    ("rd-advance-asks-selected", RD, "asked, nxt = m.replies[m.stage], m.stage + 1",
     "asked, nxt = m.asked, m.stage + 1", "RD"),
    ("rd-stopped-reopens", RD, "if m.phase in (Phase.COMMITTED, Phase.ABANDONED):", "if m.phase == Phase.COMMITTED:",
     "RD"),
    ("rd-decline-unexpected-counts", RD, "        if m.expects(event.device_id):\n            m = _check_reachable",
     "        if True:\n            m = _check_reachable", "RD"),
    ("rd-with-quorum-current", RD, "if not m.stage < stage < len(m.stages):",
     "if not m.stage <= stage < len(m.stages):", "RD"),
    ("rd-with-quorum-0", RD, "if quorum < 1:", "if quorum < 0:", "RD"),
    ("rd-expects-stage-full", RD, "return (self.phase == Phase.TRAINING and not self.stage_full and",
     "return (self.phase == Phase.TRAINING and", "RD"),
    ("rd-in-stage-always", RD, 'if len(m.stages) > 1 else ""', 'if len(m.stages) >= 1 else ""', "RD"),
    # sampling.py: over-selection and the draws
    ("sa-ceil-floor", SA, "max(wanted, math.ceil(wanted * over_selection))",
     "max(wanted, math.floor(wanted * over_selection))", "SA"),
    ("sa-ceil-round", SA, "max(wanted, math.ceil(wanted * over_selection))",
     "max(wanted, round(wanted * over_selection))", "SA"),
    ("sa-no-max-wanted", SA, "max(wanted, math.ceil(wanted * over_selection))", "math.ceil(wanted * over_selection)",
     "SA"),
    ("sa-no-min-available", SA, "return min(available, max(wanted,", "return (lambda *a: a[-1])(available, max(wanted,",
     "SA"),
    ("sa-count-gt", SA, "if count >= len(pool):", "if count > len(pool):", "SA"),
    ("sa-poisson-le", SA, "rng.random(len(pool)) < rate)", "rng.random(len(pool)) <= rate)", "SA"),
    ("sa-poisson-rate0", SA, "if not 0.0 < rate <= 1.0:", "if not 0.0 <= rate <= 1.0:", "SA"),
    # backoff.py: permanent declines and the abandoned-round delay
    ("bo-exp-n", BO, "base_s * 2.0 ** min(consecutive - 1, 60)", "base_s * 2.0 ** min(consecutive, 60)", "BO"),
    ("bo-no-cap", BO, "return min(max_s, base_s * 2.0", "return max(0.0, base_s * 2.0", "BO"),
    ("bo-zero-lt", BO, "if consecutive <= 0 or base_s <= 0:", "if consecutive < 0 or base_s <= 0:", "BO"),
    ("bo-drop-bad-state", BO, '"unsupported_by_backend", "bad_state"})', '"unsupported_by_backend"})', "BO"),
    ("bo-drop-unsupported", BO, '"unsupported_by_backend", "bad_state"})', '"bad_state"})', "BO"),
    ("bo-parked-any", BO, "return parked if parked and last == checkin else", "return parked if parked else", "BO"),
    # pace.py: reasons and delays
    ("pa-floor-0", PA, "max(1.0, base + jitter_s * jitter)", "max(0.0, base + jitter_s * jitter)", "PA"),
    ("pa-no-remaining", PA, "RECHECK_S.get(cause, declined_s)), remaining)", "RECHECK_S.get(cause, declined_s)), 0.0)",
     "PA"),
    ("pa-no-cap-declined", PA, "base = max(min(declined_s, RECHECK_S.get(cause, declined_s)),",
     "base = max(RECHECK_S.get(cause, declined_s),", "PA"),
    ("pa-no-prefix", PA, 'cause = device_reason.removeprefix("aborted:")', "cause = device_reason", "PA"),
    ("pa-cpu-60", PA, '"cpu_busy": 30.0,', '"cpu_busy": 60.0,', "PA"),
    ("pa-battery-300", PA, '"battery_low": 600.0}', '"battery_low": 300.0}', "PA"),
    ("pa-metered-120", PA, '"metered_link": 300.0,', '"metered_link": 120.0,', "PA"),
    ("pa-order-reported", PA, "    if device_id in machine.declined:\n        return DECLINED\n",
     "    if device_id in machine.reported:\n        return REPORTED\n", "PA"),
    ("pa-ineligible-first", PA, "    if not eligible:\n        return INELIGIBLE\n    if machine is None",
     "    if machine is None", "PA"),
    # checkin_limit.py
    ("cl-tokens-le", CL, "if tokens < 1.0:", "if tokens <= 1.0:", "CL"),
    ("cl-no-cap", CL, "return min(float(self.burst), tokens +", "return max(float(self.burst), tokens +", "CL"),
    ("cl-prune-le", CL, "if self._tokens(d, now) < self.burst}", "if self._tokens(d, now) <= self.burst}", "CL"),
    ("cl-burst0", CL, "if burst < 1 or not refill_s >= 0:", "if burst < 0 or not refill_s >= 0:", "CL"),
    # limits.py
    ("li-fleet-plus1", LI, "MAX_FLEET = 1_000_000", "MAX_FLEET = 1_000_001", "LI"),
    ("li-cc-99", LI, "MAX_CC_ITERATIONS = 100", "MAX_CC_ITERATIONS = 99", "LI"),
    ("li-bits-127", LI, "MAX_SECURITY_BITS = 128", "MAX_SECURITY_BITS = 127", "LI"),
    # sidelined.py
    ("sl-exp-n", SL, "FIRST_S * 2.0 ** min(n - 1, 60)", "FIRST_S * 2.0 ** min(n, 60)", "SL"),
    ("sl-no-cap", SL, "seconds = min(MAX_S, FIRST_S", "seconds = max(0.0, FIRST_S", "SL"),
    ("sl-active-ge", SL, "if until > now}", "if until >= now}", "SL"),
    ("sl-first-300", SL, "FIRST_S = 600.0", "FIRST_S = 300.0", "SL"),
    # eligibility.py: thresholds at their documented limits, the order, unknown facts
    ("el-battery-le", EL, "if battery < policy.min_battery_percent:", "if battery <= policy.min_battery_percent:",
     "EL"),
    ("el-temp-ge", EL, "facts.temperature_c > policy.max_temperature_c:",
     "facts.temperature_c >= policy.max_temperature_c:", "EL"),
    ("el-cpu-le", EL, "idle < policy.min_cpu_idle_percent:", "idle <= policy.min_cpu_idle_percent:", "EL"),
    ("el-mem-le", EL, "facts.free_memory_mb < policy.min_free_memory_mb:",
     "facts.free_memory_mb <= policy.min_free_memory_mb:", "EL"),
    ("el-charging-not-false", EL, "if policy.require_charging and facts.charging is not True:",
     "if policy.require_charging and facts.charging is False:", "EL"),
    ("el-cpu-during", EL, 'if phase == "before" and idle is not None', "if idle is not None", "EL"),
    ("el-cellular-unmetered-default", EL, 'else link == "cellular"', "else False", "EL"),
    ("el-cellular-not-allowed-reason", EL, 'return "metered_link" if link == "cellular" else "link_not_allowed"',
     'return "link_not_allowed"', "EL"),
    ("el-unknown-link-blocks", EL, "        return None  # the broker connection",
     "        return \"link_not_allowed\"  #", "EL"),
    ("el-window-unknown-passes", EL, "(facts.local_time_minutes is None or not in_window",
     "(facts.local_time_minutes is not None and not in_window", "EL"),
    ("el-window-end-le", EL, "return start <= minutes < end\n", "return start <= minutes <= end\n", "EL"),
    ("el-window-wrap-ge", EL, "return minutes >= start or minutes < end", "return minutes > start or minutes < end",
     "EL"),
    ("el-battery-range-99", EL, '_check_range("min_battery_percent", self.min_battery_percent, 0.0, 100.0)',
     '_check_range("min_battery_percent", self.min_battery_percent, 0.0, 99.0)', "EL"),
    ("el-hhmm-24", EL, "if not (0 <= h <= 23 and", "if not (0 <= h <= 24 and", "EL"),
    ("el-first-reason-last", EL, "return reasons[0] if reasons else None", "return reasons[-1] if reasons else None",
     "EL"),
    # eligibility_monitor.py
    ("em-interval-gt", EM, "self.clock.now() - self.read_at >= self.check_interval_s:",
     "self.clock.now() - self.read_at > self.check_interval_s:", "EL"),
    ("em-before-cached", EM, "            self._read()\n            return self._judge(\"before\")",
     "            if self.read_at is None:\n                self._read()\n            return self._judge(\"before\")",
     "EL"),
    ("em-negative-interval", EM, "if check_interval_s < 0:", "if check_interval_s < -1:", "EL"),
    # work_limits.py
    ("wl-deadline-gt", WL, "if now >= deadline_at:", "if now > deadline_at:", "WL"),
    ("wl-cap-gt", WL, "return TIME_LIMIT if now >= cap_at else None", "return TIME_LIMIT if now > cap_at else None",
     "WL"),
    ("wl-order", WL,
     "        if now >= deadline_at:\n            return DEADLINE\n"
     "        return TIME_LIMIT if now >= cap_at else None",
     "        if now >= cap_at:\n            return TIME_LIMIT\n"
     "        return DEADLINE if now >= deadline_at else None",
     "WL"),
    ("wl-forget-ge", WL, "if len(tasks) > kept:", "if len(tasks) > kept + 1:", "WL"),
    ("wl-forget-unanswered", WL, "if state in TERMINAL]", "]", "WL"),
    ("wl-announced-ge", WL, "while len(announced) > kept:", "while len(announced) > kept + 1:", "WL"),
    ("wl-announced-no-pop", WL, "    announced.pop(model_id, None)\n", "", "WL"),
]
_RT = "tests/coordinator/test_round_table_edges.py"
_SE = "tests/coordinator/test_selection_edges.py"
_WE = "tests/edge_runtime/test_work_limit_edges.py"
AFTER = {
    **dict.fromkeys(["rd-later-quorum0", "rd-advance-no-cap", "rd-advance-cap-max0", "rd-stopped-reopens",
                     "rd-with-quorum-0", "rd-in-stage-always"], _RT),
    **dict.fromkeys(["sa-no-max-wanted", "sa-count-gt", "sa-poisson-le", "bo-drop-unsupported", "pa-metered-120",
                     "cl-burst0", "li-fleet-plus1", "li-cc-99", "sl-first-300"], _SE),
    **dict.fromkeys(["el-hhmm-24", "wl-deadline-gt", "wl-cap-gt", "wl-order", "wl-forget-ge", "wl-forget-unanswered",
                     "wl-announced-no-pop"], _WE),
}
