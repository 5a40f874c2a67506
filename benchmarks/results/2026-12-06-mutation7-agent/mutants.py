"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E = "tests/edge_runtime/"
GROUPS = {
    "TA": _E + "test_task.py " + _E + "test_work_limit_edges.py " + _E + "test_delivery_edges.py "
    + "tests/coordinator/test_task_deadline.py",
    "SY": _E + "test_probes.py " + _E + "test_eligibility.py",
    "DF": _E + "test_data_file.py",
    "EX": _E + "test_data_formats.py " + _E + "test_split_scale.py tests/tools/test_npz_layout.py",
    "EV": "tests/coordinator/test_evaluation.py",
    "AG": _E + "test_device.py " + _E + "test_abort_mid_training.py " + _E + "test_hostile_coordinator.py "
    + _E + "test_crash_windows.py " + _E + "test_device_service.py " + _E + "test_uplink_backlog.py " + _E
    + "test_pace_bounds.py " + _E + "test_task_time_limit.py " + _E + "test_misdirected_ack.py " + _E
    + "test_unreadable_tasks.py " + _E + "test_reload_checkin.py " + _E + "test_scaffold_device.py",
    "MR": "tests/models/test_bad_input.py " + _E + "test_data_file_layout.py " + _E + "test_state_key.py " + _E
    + "test_hostile_artifacts.py",
}
TA, SY, PR = "edge_runtime/task.py", "edge_runtime/sysfs_facts.py", "edge_runtime/probes.py"
DF, EX, EV = "edge_runtime/data_file.py", "edge_runtime/examples.py", "edge_runtime/evaluation.py"
AG, LO, DV = "edge_runtime/agent.py", "edge_runtime/loop.py", "edge_runtime/device.py"
MR = "edge_runtime/model_runtime.py"
MUTANTS = [
    # task.py: the deadline rule, the safe model id, abort vs decline, ack vs rejected
    ("ta-deadline-gt", TA, "if event.now >= deadline_at:", "if event.now > deadline_at:", "TA"),
    ("ta-deadline-from-now", TA, "deadline_at = event.received_at + event.deadline_s",
     "deadline_at = event.now + event.deadline_s", "TA"),
    ("ta-safe-id-dot-first", TA, 'r"[0-9A-Za-z_-][0-9A-Za-z_.-]', 'r"[0-9A-Za-z_.-][0-9A-Za-z_.-]', "TA"),
    ("ta-safe-id-len", TA, '_.-]{0,127}")', '_.-]{0,128}")', "TA"),
    ("ta-abort-as-decline", TA, 'advance(state, "abort" if event.aborted else "decline")',
     'advance(state, "decline")', "TA"),
    ("ta-rejected-as-ack", TA, '"ack" if event.accepted else "rejected"', '"ack"', "TA"),
    # sysfs_facts.py: power, temperature, link
    ("sy-scope-device-kept", SY, '_read(supply / "scope") == "Device" or ', "", "SY"),
    ("sy-max-battery", SY, "battery = min(levels)", "battery = max(levels)", "SY"),
    ("sy-full-not-charging", SY, '("Charging", "Full")', '("Charging",)', "SY"),
    ("sy-all-any-discharging", SY, 'all(s == "Discharging" for s in statuses)',
     'any(s == "Discharging" for s in statuses)', "SY"),
    ("sy-statuses-dropped", SY, "(battery is not None or external or statuses)", "(battery is not None or external)",
     "SY"),
    ("sy-capacity-clamp", SY, "float(min(100, max(0, level)))", "float(min(100, level))", "SY"),
    ("sy-charge-fallback", SY, ', ("charge_now", "charge_full"))', ",)", "SY"),
    ("sy-temp-plausible-hi", SY, "<= celsius <= _PLAUSIBLE_C[1]", "<= celsius < _PLAUSIBLE_C[1]", "SY"),
    ("sy-hwmon-always", SY, "    if not readings:\n        for sensor", "    if True:\n        for sensor", "SY"),
    ("sy-route-metric", SY, "candidate = (int(f[6]), f[0])\n            best = candidate if best is None or "
     "candidate < best", "candidate = (int(f[6]), f[0])\n            best = candidate if best is None or "
     "candidate > best", "SY"),
    ("sy-route-rtf-up", SY, "int(f[3], 16) & 1:", "True:", "SY"),
    ("sy-link-pref", SY, '("ethernet", "wifi", "cellular")', '("wifi", "ethernet", "cellular")', "SY"),
    ("sy-arphrd-rawip", SY, "if arphrd in (_ARPHRD_PPP, _ARPHRD_RAWIP):", "if arphrd == _ARPHRD_PPP:", "SY"),
    # probes.py: nmcli's cache and answer, idle CPU, when the link is asked about
    ("pr-metered-ttl-gt", PR, "now - cached[0] >= self.metered_ttl_s", "now - cached[0] > self.metered_ttl_s", "SY"),
    ("pr-nmcli-guessed", PR, 'if value.startswith("yes"):', 'if value == "yes":', "SY"),
    ("pr-cpu-iowait", PR, 'return t.idle + getattr(t, "iowait", 0.0)', "return t.idle", "SY"),
    ("pr-metered-link-unknown", PR, 'if link.link not in ("none", "unknown") else None',
     'if link.link != "none" else None', "SY"),
    # data_file.py: the size limit, the header, the layout, a renamed .npy
    ("df-max-bytes-ge", DF, "if loaded > MAX_DATA_BYTES:", "if loaded >= MAX_DATA_BYTES:", "DF"),
    ("df-itemsize-float32", DF, "math.prod(shape) * max(dtype.itemsize, 4)", "math.prod(shape) * dtype.itemsize",
     "DF"),
    ("df-fortran", DF, "return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)",
     "return flat.reshape(shape)", "DF"),
    ("df-npy-renamed", DF, "if raw.read(len(_NPY_MAGIC)) == _NPY_MAGIC:", "if False:", "DF"),
    # examples.py: labels and layouts
    ("ex-max-classes-gt", EX, "y.max() >= max_classes:", "y.max() > max_classes:", "EX"),
    ("ex-float-labels", EX, "np.isfinite(y).all() and (y == np.round(y)).all()", "np.isfinite(y).all()", "EX"),
    ("ex-layout-empty-pass", EX, "if len(x) == 0 or len(layout) < 2:", "if len(layout) < 2:", "EX"),
    # evaluation.py
    ("ev-answered-once", EV, "if task.eval_id in self.answered:", "if False:", "EV"),
    ("ev-model-missing", EV, "if refused is None and task.model_id not in runtime.model_dirs:", "if False:", "EV"),
    ("ev-loss-clamp", EV, "min(max(value, 0.0), MAX_EVAL_LOSS)", "min(value, MAX_EVAL_LOSS)", "EV"),
    # agent.py and loop.py
    ("ag-max-pending-gt", AG, "if len(self.pending) >= self.max_pending:", "if len(self.pending) > self.max_pending:",
     "AG"),
    ("ag-pace-cap", AG, "min(max(0.0, message.retry_after_s), self.max_pace_s)", "max(0.0, message.retry_after_s)",
     "AG"),
    ("ag-retained-ignored", AG, "if msg.retain and device_of(msg.topic):", "if False:", "AG"),
    ("ag-inline-deadline-restart", AG, "self._received[task.task_id] = self.clock.now()  # its deadline_s counts "
     "from now", "pass", "AG"),
    ("ag-abort-stage", AG, 'aborted=reply.stage == "during"', "aborted=False", "AG"),
    ("lo-reconnect", LO, "if count != seen:", "if False:", "AG"),
    # device.py
    ("dv-eligibility-before", DV, 'if reason:\n            return self._decline(task, reason, "not eligible"',
     'if False:\n            return self._decline(task, reason, "not eligible"', "AG"),
    ("dv-keep-opt-state", DV, "kept_state = result.opt_state if task.hyper.keep_optimizer_state else None",
     "kept_state = result.opt_state", "AG"),
    ("dv-fitting-shapes", DV,
     "return arrays if all(np.shape(arrays[k]) == np.shape(v) for k, v in like.items()) else None",
     "return arrays", "AG"),
    # model_runtime.py: the model id, labels and layouts it takes, a folder changed under it
    ("mr-expected-id-skipped", MR, "if expected_model_id is not None and self.manifest.model_id != expected_model_id:",
     "if False:", "MR"),
    ("mr-labels-gt", MR, "int(np.max(y)) >= classes:", "int(np.max(y)) > classes:", "MR"),
    ("mr-layout-skipped", MR, "if len(have) >= 2 and len(takes) >= 2 and have != takes:", "if False:", "MR"),
    ("mr-stale-never", MR, "return _manifest_hash(self.dir) != self.manifest_sha256", "return False", "MR"),
]
_S, _D = _E + "test_sysfs_edges.py", _E + "test_data_limit_edges.py"
_V, _A = _E + "test_eval_edges.py", _E + "test_agent_edges.py"
AFTER = {
    **dict.fromkeys(
        [
            "sy-all-any-discharging",
            "sy-capacity-clamp",
            "sy-charge-fallback",
            "sy-temp-plausible-hi",
            "sy-hwmon-always",
            "sy-route-rtf-up",
            "sy-arphrd-rawip",
            "pr-metered-ttl-gt",
            "pr-cpu-iowait",
            "pr-metered-link-unknown",
        ],
        _S,
    ),
    **dict.fromkeys(["df-max-bytes-ge", "df-itemsize-float32", "ex-max-classes-gt", "ex-float-labels"], _D),
    **dict.fromkeys(["ev-answered-once", "ev-loss-clamp"], _V),
    **dict.fromkeys(
        ["ag-inline-deadline-restart", "ag-abort-stage", "lo-reconnect", "dv-fitting-shapes", "mr-labels-gt"], _A
    ),
}
