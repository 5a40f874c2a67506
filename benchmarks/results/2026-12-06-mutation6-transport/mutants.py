"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_T, _C = "tests/tools/", "tests/coordinator/"
GROUPS = {
    "CF": _T + "test_broker.py",
    "PW": _T + "test_provision.py " + _T + "test_passwd_owner.py",
    "CE": _T + "test_provision.py",
    "SU": _T + "test_shard_users.py",
    "PV": _T + "test_provision.py " + _T + "test_shard_users.py",
    "OB": _C + "test_unsendable.py " + _C + "test_round_model_delivery.py " + _C + "test_restart.py",
    "RF": _C + "test_retain_fanout.py",
    "LD": _C + "test_pg_store.py " + _C + "test_service_leader.py",
    "SL": _C + "test_service_unavailable.py",
    "FE": _C + "test_round_model_delivery.py " + _C + "test_artifacts.py",
    "LK": _C + "test_restart.py " + _C + "test_close_without_link.py",
}
CF, PW, CE = "tools/broker/config.py", "tools/broker/passwd.py", "tools/broker/certs.py"
SU, PV = "tools/broker/shard_users.py", "tools/provision.py"
OB, RF, LD = "coordinator/outbound.py", "coordinator/retain_fanout.py", "coordinator/leadership.py"
SL, FE, LK = "coordinator/state_lock.py", "coordinator/fetches.py", "coordinator/link.py"
MUTANTS = [
    # config.py: the rendered config's limits and what a secured listener must say
    ("cf-port-lt", CF, "if not 0 <= self.port <= 65535:", "if not 0 <= self.port < 65535:", "CF"),
    ("cf-packet-le", CF, "if self.max_packet_size < 20:", "if self.max_packet_size <= 20:", "CF"),
    ("cf-secured-tls-no-cert", CF, "(self.tls is not None and self.tls.require_certificate)",
     "(self.tls is not None)", "CF"),
    ("cf-no-clientid-lock", CF, '        lines.append("use_username_as_clientid true")', "        pass", "CF"),
    ("cf-packet-constant", CF, 'f"max_packet_size {cfg.max_packet_size}"', 'f"max_packet_size {MAX_PACKET_SIZE}"',
     "CF"),
    ("cf-acl-no-shards", CF, "acl_path.write_text(acl_text(cfg.shards)", "acl_path.write_text(acl_text(0)", "CF"),
    # passwd.py: the hash Mosquitto reads, the file fedge rewrites
    ("pw-iterations-100", PW, "PBKDF2_ITERATIONS = 101", "PBKDF2_ITERATIONS = 100", "PW"),
    ("pw-verify-default-iterations", PW, "salt, int(parts[2]), len(key))", "salt, PBKDF2_ITERATIONS, len(key))",
     "PW"),
    ("pw-verify-6-no-salt", PW, 'hashlib.sha512(password.encode("utf-8") + salt)',
     'hashlib.sha512(password.encode("utf-8"))', "PW"),
    ("pw-username-cr", PW, 'for c in ":\\n\\r\\0")', 'for c in ":\\n\\0")', "PW"),
    ("pw-keeps-second-line", PW, "if entry is not None and not found:", "if entry is not None:", "PW"),
    ("pw-mode-644", PW, "os.chmod(tmp, 0o600)", "os.chmod(tmp, 0o644)", "PW"),
    ("pw-empty-hash", PW, 'encoded.startswith("$") and len(encoded) > 1', 'encoded.startswith("$")', "PW"),
    ("pw-remove-not-written", PW, "    if found:\n        write_private_file",
     "    if False:\n        write_private_file", "PW"),
    # certs.py: validity, constraints, SANs, the key file
    ("ce-leaf-days-826", CE, "LEAF_DAYS = 825", "LEAF_DAYS = 826", "CE"),
    ("ce-ca-any-path", CE, "BasicConstraints(ca=True, path_length=0)", "BasicConstraints(ca=True, path_length=None)",
     "CE"),
    ("ce-cn-lt-64", CE, "if not 1 <= len(name) <= 64:", "if not 1 <= len(name) < 64:", "CE"),
    ("ce-ip-as-dns", CE, "return x509.IPAddress(ipaddress.ip_address(host))", "return x509.DNSName(host)", "CE"),
    ("ce-client-server-eku", CE, "common_name, [], ExtendedKeyUsageOID.CLIENT_AUTH",
     "common_name, [], ExtendedKeyUsageOID.SERVER_AUTH", "CE"),
    ("ce-leaf-ca-days", CE, "now + dt.timedelta(days=days))\n        .add_extension(x509.BasicConstraints(ca=False",
     "now + dt.timedelta(days=CA_DAYS))\n        .add_extension(x509.BasicConstraints(ca=False", "CE"),
    ("ce-key-mode-644", CE, "os.O_EXCL, 0o600)", "os.O_EXCL, 0o644)", "CE"),
    ("ce-cert-replaced", CE, "if not overwrite and files.cert.exists():", "if False:", "CE"),
    # shard_users.py: the K blocks and who counts as a worker
    ("su-range-lt", SU, "if not 0 <= shards <= MAX_SHARDS:", "if not 0 <= shards < MAX_SHARDS:", "SU"),
    ("su-noncanonical", SU, "\n            and shard_client_id(int(k)) == name)", ")", "SU"),
    ("su-last-shard-ungranted", SU, "shard_update_topic(k, '%u')}\" for k in range(shards)]",
     "shard_update_topic(k, '%u')}\" for k in range(shards - 1)]", "SU"),
    # provision.py: who may be a device, never overwrite what fedge did not write
    ("pv-id-len-ge", PV, "if len(device_id) > MAX_ID_LEN", "if len(device_id) >= MAX_ID_LEN", "PV"),
    ("pv-colon-allowed", PV, 'any(c == ":" or c.isspace()', "any(c.isspace()", "PV"),
    ("pv-shard-prefix-narrow", PV, "if device_id.startswith(SHARD_USER_PREFIX):", "if is_shard_user(device_id):",
     "PV"),
    ("pv-edited-replaced", PV, "(not path.is_file() or path.read_bytes() != data)", "(not path.is_file())", "PV"),
    ("pv-symlink-followed", PV, "if path.is_symlink() or path.exists() and", "if path.exists() and", "PV"),
    ("pv-passwd-rewritten", PV, "if not passwd.exists():", "if True:", "PV"),
    ("pv-cert-no-precheck", PV,
     "        for username in usernames:\n            _creds_path(args.out, username, args.force)\n"
     "        for username in usernames:\n            creds = provision_cert(",
     "        for username in usernames:\n            creds = provision_cert(", "PV"),
    # outbound.py: when a task may go again, stale retained parts
    ("ob-resend-le", OB, "now - last < self.config.task_resend_s", "now - last <= self.config.task_resend_s", "OB"),
    ("ob-stale-parts-kept", OB, "range(retained, max(sent, self.parts_retained))", "range(retained, sent)", "OB"),
    ("ob-inline-by-ref", OB, "by_ref = bool(rnd.round_model_sha256) and not inline",
     "by_ref = bool(rnd.round_model_sha256)", "OB"),
    ("ob-ack-not-deferred", OB, "self.defer(lambda: self._ack(rnd, update, accepted, reason))",
     "self._ack(rnd, update, accepted, reason)", "OB"),
    # retain_fanout.py
    ("rf-failed-replay-not-retried", RF, "self._seen[i] = -1", "pass", "RF"),
    # leadership.py: fencing
    ("ld-missing-row-passes", LD, "if row is None or row[0] != epoch:", "if row is not None and row[0] != epoch:",
     "LD"),
    ("ld-rebump", LD, "        if self.epoch is not None:\n            return True",
     "        if False:\n            return True", "LD"),
    # state_lock.py
    ("sl-shared-lock", SL, "fcntl.LOCK_EX | fcntl.LOCK_NB", "fcntl.LOCK_SH | fcntl.LOCK_NB", "SL"),
    # fetches.py
    ("fe-secure-refetch", FE, "        if secure:\n", "        if False:\n", "FE"),
    ("fe-not-expected", FE, " or not rnd.machine.expects(device_id):", ":", "FE"),
    # link.py
    ("lk-no-clear", LK, "self.round.task_sent.clear()", "pass", "LK"),
    ("lk-no-model-resend", LK, "self.outbound.model(self.round)  # a broker", "pass  # a broker", "LK"),
    ("lk-no-fetch-sub", LK, '("checkin", "update", "status", "fetch")', '("checkin", "update", "status")', "LK"),
]
_CF, _PW, _CE = _T + "test_broker_config_edges.py", _T + "test_passwd_edges.py", _T + "test_cert_edges.py"
_PV, _LK = _T + "test_provision_edges.py", _C + "test_link_edges.py"
AFTER = {
    **dict.fromkeys(("cf-port-lt", "cf-packet-le", "cf-secured-tls-no-cert", "cf-packet-constant", "cf-acl-no-shards"),
                    _CF),
    **dict.fromkeys(("pw-verify-6-no-salt", "pw-username-cr", "pw-empty-hash"), _PW),
    **dict.fromkeys(("ce-leaf-days-826", "ce-ca-any-path", "ce-cn-lt-64", "ce-client-server-eku", "ce-leaf-ca-days"),
                    _CE),
    **dict.fromkeys(("su-range-lt", "pv-id-len-ge", "pv-symlink-followed", "pv-passwd-rewritten",
                     "pv-cert-no-precheck"), _PV),
    **dict.fromkeys(("ob-resend-le", "ob-stale-parts-kept", "fe-secure-refetch", "fe-not-expected",
                     "lk-no-model-resend", "lk-no-fetch-sub"), _LK),
    "ob-ack-not-deferred": _C + "test_group_commit.py",
    "rf-failed-replay-not-retried": _C + "test_retain_fanout_edges.py",
    **dict.fromkeys(("ld-missing-row-passes", "ld-rebump"), _C + "test_leadership_edges.py"),
}
