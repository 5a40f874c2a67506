"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E, _K, _T = "tests/edge_runtime/", "edge_runtime/kernel/", "tests/"
GROUPS = {
    "MF": " ".join(_E + f for f in ("test_state_key.py", "test_model_id_paths.py", "test_damaged_inputs.py")),
    "FI": " ".join(_E + f for f in ("test_durable_writes.py", "test_device_leftovers.py", "test_crash_windows.py")),
    "CF": _T + "test_config_fuzz.py " + _T + "test_config_key_paths.py",
    "FL": _E + "test_chunks.py " + _E + "test_fair_queue.py " + "tests/coordinator/test_malformed_flood.py",
    "RM": _E + "test_round_model.py",
    "CH": _E + "test_chunks.py",
    "FQ": _E + "test_fair_queue.py",
    "ST": _E + "test_broker_failover_settings.py " + _T + "test_config_fuzz.py",
    "CO": _E + "test_transport_connect_cause.py",
    "PS": _E + "test_poll_select.py",
    "BA": _E + "test_transport_memory.py",
    "MQ": _E + "test_transport_mqtt.py " + _E + "test_chunks.py",
    "AL": _E + "test_ort_training_backend.py",
    "BE": _E + "test_personalize.py " + "tests/tools/test_user_files.py",
    "DC": _T + "test_config_fuzz.py " + _T + "test_config_key_paths.py " + _E + "test_device_service.py",
}
MF, FI, CF, FL = _K + "manifest.py", _K + "files.py", _K + "configfile.py", _K + "flood.py"
RM, CH, CI, FQ = _K + "round_model.py", _K + "transport/chunks.py", _K + "transport/chunk_inbox.py", \
    _K + "transport/fair_queue.py"
ST, CO, PS = _K + "transport/settings.py", _K + "transport/connect_failure.py", _K + "transport/poll_select.py"
BA, MQ, DC = _K + "transport/base.py", _K + "transport/mqtt.py", "edge_runtime/device_config.py"
AL, BE = _K + "artifact_layout.py", _K + "backends.py"
MUTANTS = [
    # manifest.py: the format, reserved names, the hashes, the shapes
    ("mf-format-unchecked", MF, 'if d.get("format") != MANIFEST_FORMAT:', "if False:", "MF"),
    ("mf-reserved-allowed", MF, " or model_id in _RESERVED:", ":", "MF"),
    ("mf-only-ignored", MF, "if only is not None and rel not in only:", "if only is not None:", "MF"),
    ("mf-missing-unnamed", MF, "if not target.exists():", "if False:", "MF"),
    ("mf-shape-unchecked", MF, "if tuple(params[name].shape) != shape:", "if False:", "MF"),
    ("mf-state-key-no-backbone", MF, "|{manifest.files.get(BACKBONE_FILE, '-')}", "|", "MF"),
    # files.py: durable, atomic, the sweep, set_aside
    ("fi-no-fsync", FI, "                os.fsync(fh.fileno())", "                pass", "FI"),
    ("fi-tmp-left", FI, "        tmp.unlink(missing_ok=True)\n        raise", "        raise", "FI"),
    ("fi-sweep-own-pid", FI, "int(match.group(2)) == os.getpid() or ", "", "FI"),
    ("fi-sweep-links", FI, "if path.is_symlink() or not path.is_file():", "if not path.is_file():", "FI"),
    ("fi-pid-perm-dead", FI, "        return True  # either way", "        return False  # either way", "FI"),
    # configfile.py: unknown keys, ranges, types
    ("cf-unknown-ignored", CF, "    if unknown:\n", "    if False:\n", "CF"),
    ("cf-range-lt", CF, "not bounds[0] <= value <= bounds[1]", "not bounds[0] <= value < bounds[1]", "CF"),
    ("cf-bool-as-int", CF, "        if isinstance(value, bool) or not isinstance(value, int):",
     "        if not isinstance(value, int):", "CF"),
    ("cf-i64-lt", CF, "if not I64[0] <= value <= I64[1]:", "if not I64[0] <= value < I64[1]:", "CF"),
    ("cf-text-ge", CF, "if len(value) > MAX_TEXT:", "if len(value) >= MAX_TEXT:", "CF"),
    # flood.py
    ("fl-worth-lt-10", FL, "return n <= 10 or", "return n < 10 or", "FL"),
    # round_model.py: the byte bound, the hash, the waits
    ("rm-size-ge", RM, "if self.size > self.max_bytes:", "if self.size >= self.max_bytes:", "RM"),
    ("rm-count-unchecked", RM, " or (self.count and part.count != self.count)", "", "RM"),
    ("rm-overdue-ge", RM, "now - wait.started > wait_s", "now - wait.started >= wait_s", "RM"),
    ("rm-take-keeps-empty", RM, "                if not kept:\n", "                if False:\n", "RM"),
    # chunks.py: frame room, the limits, expiry, fairness under the global bound
    ("ch-room-plus-1", CH, "room = max_frame - CHUNK_HEADER_SIZE\n", "room = max_frame - CHUNK_HEADER_SIZE + 1\n",
     "CH"),
    ("ch-total-ge", CH, "if total > self.max_message_bytes:", "if total >= self.max_message_bytes:", "CH"),
    ("ch-sets-33", CH, "MAX_SETS_PER_SENDER = 32", "MAX_SETS_PER_SENDER = 33", "CH"),
    ("ch-expire-ge", CH, "now - s.first_seen > self.expiry_s", "now - s.first_seen >= self.expiry_s", "CH"),
    ("ch-share-ge", CH, "self._per_sender.get(sender, 0) + size > self.max_message_bytes:",
     "self._per_sender.get(sender, 0) + size >= self.max_message_bytes:", "CH"),
    ("ch-steal-from-equal", CH, "self._per_sender[top] <= mine", "self._per_sender[top] < mine", "CH"),
    ("ci-refused-uncounted", CI, "self._refused[exc.reason] += 1", "pass", "CH"),
    # fair_queue.py
    ("fq-share-ge", FQ, "held + size > self.per_sender_bytes", "held + size >= self.per_sender_bytes", "FQ"),
    ("fq-total-unbounded", FQ, " or self._total + size > self.total_bytes:", ":", "FQ"),
    ("fq-no-turns", FQ, "self._senders.move_to_end(sender)", "pass", "FQ"),
    ("fq-held-kept", FQ, "self._held[sender] -= len(message.payload)", "pass", "FQ"),
    # settings.py
    ("st-packet-le-1024", ST, "self.max_packet_size < 1024", "self.max_packet_size <= 1024", "ST"),
    ("st-keepalive-lt", ST, "0 <= self.keepalive_s <= 65535", "0 <= self.keepalive_s < 65535", "ST"),
    # connect_failure.py
    ("co-streak-any-cause", CO, "n = n + 1 if text == cause.text else 1", "n = n + 1", "CO"),
    ("co-ip-mismatch-untrusted", CO, "_NAME_MISMATCH = {62, 64}", "_NAME_MISMATCH = {62}", "CO"),
    ("co-connected-keeps-streaks", CO, "        self._streaks.clear()", "        pass", "CO"),
    # poll_select.py
    ("ps-hup-not-readable", PS, '_READ_EVENTS = ("POLLIN", "POLLPRI", "POLLHUP", "POLLERR")',
     '_READ_EVENTS = ("POLLIN", "POLLPRI", "POLLERR")', "PS"),
    # base.py: topic rules
    ("ba-dollar-matched", BA, 'if topic.startswith("$") and topic_filter[:1] in ("+", "#"):', "if False:", "BA"),
    ("ba-topic-bytes-ge", BA, "if size > _MAX_TOPIC_BYTES:", "if size >= _MAX_TOPIC_BYTES:", "BA"),
    # mqtt.py: decisions, not sockets
    ("mq-packet-cap-ignored", MQ, "limit = min(limit, self.settings.max_packet_size)", "pass", "MQ"),
    # artifact_layout.py: the AdamW node the ORT optimizer graph is rewritten to; backends.py
    ("al-decay-unset", AL, ', "weight_decay": weight_decay}', "}", "AL"),
    ("al-mode-unset", AL, "            attr.i = adam_mode", "            pass", "AL"),
    ("be-training-any-onnxruntime", BE, ' and (Path(spec.submodule_search_locations[0]) / "training" / "api").is_dir()',
     "", "BE"),
    # device_config.py
    ("dc-coordinator-id", DC, ' or self.device_id == "coordinator":', ":", "DC"),
    ("dc-dotdot", DC, 'if self.device_id in (".", ".."):', 'if self.device_id == ".":', "DC"),
    ("dc-backend-unchecked", DC, 'if self.backend != "auto" and self.backend not in BACKENDS:', "if False:", "DC"),
    ("dc-noise-inf", DC, "if not 0 <= self.own_noise_multiplier < math.inf:",
     "if not 0 <= self.own_noise_multiplier:", "DC"),
]
_N = {k: (_T if k in ("configfile", "flood") else _E) + f"test_{k}_edges.py" for k in (
    "manifest", "kernel_files", "backends", "configfile", "flood", "round_model", "chunk", "transport_settings",
    "poll_select", "device_config")}
AFTER = {
    **dict.fromkeys(("mf-format-unchecked", "mf-missing-unnamed", "mf-shape-unchecked"), _N["manifest"]),
    **dict.fromkeys(("fi-no-fsync", "fi-tmp-left", "fi-sweep-own-pid", "fi-pid-perm-dead"), _N["kernel_files"]),
    **dict.fromkeys(("cf-range-lt", "cf-i64-lt", "cf-text-ge"), _N["configfile"]),
    "fl-worth-lt-10": _N["flood"],
    **dict.fromkeys(("rm-size-ge", "rm-overdue-ge", "rm-take-keeps-empty"), _N["round_model"]),
    **dict.fromkeys(("ch-total-ge", "ch-sets-33", "ch-expire-ge", "ci-refused-uncounted"), _N["chunk"]),
    **dict.fromkeys(("st-packet-le-1024", "st-keepalive-lt", "co-connected-keeps-streaks", "ba-topic-bytes-ge",
                     "mq-packet-cap-ignored"), _N["transport_settings"]),
    "ps-hup-not-readable": _N["poll_select"],
    "be-training-any-onnxruntime": _N["backends"],
    **dict.fromkeys(("dc-coordinator-id", "dc-dotdot", "dc-noise-inf"), _N["device_config"]),
}
