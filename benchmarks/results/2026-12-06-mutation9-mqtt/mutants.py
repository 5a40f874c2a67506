"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E, _K = "tests/edge_runtime/", "edge_runtime/kernel/transport/"
_LINK = " ".join(_E + f for f in (
    "test_transport_mqtt.py", "test_publish_refused_mqtt.py", "test_transport_connect_cause.py", "test_chunks.py",
    "test_transport_settings_edges.py", "test_broker_failover_settings.py", "test_transport_ejabberd.py"))
GROUPS = {
    "MQ": _LINK + " tests/coordinator/test_retain_fanout.py",
    "ST": _LINK + " tests/test_config_fuzz.py tests/test_config_key_paths.py",
    "BM": "tests/tools/test_bench_mqtt.py",
}
MQ, PC, BO, ST = _K + "mqtt.py", _K + "paho_client.py", _K + "backoff.py", _K + "settings.py"
BM = "tools/bench/mqtt.py"
MUTANTS = [
    # mqtt.py: CONNACK refusals, the session, resubscription, the backoff counter, failover
    ("mq-fatal-no-134", MQ, "_FATAL_CONNACK = {133, 134, 135, 138, 140}", "_FATAL_CONNACK = {133, 135, 138, 140}",
     "MQ"),
    ("mq-fatal-no-135", MQ, "_FATAL_CONNACK = {133, 134, 135, 138, 140}", "_FATAL_CONNACK = {133, 134, 138, 140}",
     "MQ"),
    ("mq-session-present-false", MQ, "self.session_present = bool(flags.session_present)",
     "self.session_present = False", "MQ"),
    ("mq-resubscribe-qos0", MQ, "            client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))",
     "            client.subscribe(topic_filter, options=SubscribeOptions(qos=0))", "MQ"),
    ("mq-attempt-kept", MQ, "        self._attempt = 0\n        self._set_next_delay()\n        self.connection_count",
     "        self._set_next_delay()\n        self.connection_count", "MQ"),
    ("mq-failover-same-node", MQ, "self._node + 1, use_endpoint(client, self.settings, self._node + 1)",
     "self._node, use_endpoint(client, self.settings, self._node)", "MQ"),
    ("mq-linklost-never-up", MQ, "if not closing and was_up:", "if not closing:", "MQ"),
    ("mq-chunk-partial-delivered", MQ, "            if payload is None:\n                return",
     "            if payload is None:\n                pass", "MQ"),
    ("mq-early-ack-lost", MQ, "            if topic is None:\n                self._early_acks.add(mid)",
     "            if topic is None:\n                pass", "MQ"),
    ("mq-early-refusal-unnamed", MQ, "                                refusal[1] = topic",
     "                                pass", "MQ"),
    ("mq-refusals-kept-le", MQ, "if len(self._refusals) < _REFUSALS_KEPT:", "if len(self._refusals) <= _REFUSALS_KEPT:",
     "MQ"),
    ("mq-puback-refusal-ignored", MQ, "refused = reason_code.is_failure", "refused = False", "MQ"),
    ("mq-message-size-ge", MQ, "if len(data) > self.settings.max_message_bytes:",
     "if len(data) >= self.settings.max_message_bytes:", "MQ"),
    ("mq-frame-fits-lt", MQ, "if len(data) <= limit:", "if len(data) < limit:", "MQ"),
    ("mq-topic-chars", MQ, "limit = self.max_payload - len(topic.encode())", "limit = self.max_payload - len(topic)",
     "MQ"),
    ("mq-retained-chunked", MQ, "        elif retain:\n", "        elif False:\n", "MQ"),
    ("mq-publish-qos0", MQ, "info = self._client.publish(topic, frame, qos=qos, retain=retain)",
     "info = self._client.publish(topic, frame, qos=0, retain=retain)", "MQ"),
    ("mq-subscribe-qos0", MQ, "granted = self._subscribe_now(topic_filter, qos)",
     "granted = self._subscribe_now(topic_filter, 0)", "MQ"),
    ("mq-suback-refusal-ignored", MQ, "        if granted.is_failure:\n", "        if False:\n", "MQ"),
    ("mq-unsubscribe-keeps-filter", MQ, "            self._filters.pop(topic_filter, None)", "            pass", "MQ"),
    ("mq-closed-raises-once", MQ, "            self._queue.put_control(item)  # keep raising for every later call",
     "            pass", "MQ"),
    ("mq-close-no-disconnect", MQ, "            if was_up:  # paho logs", "            if False:  # paho logs", "MQ"),
    # paho_client.py: the session, the will, TLS, keep-alive, paho's queue, the failover port
    ("pc-clean-start", PC, "clean_start=settings.clean_start", "clean_start=True", "MQ"),
    ("pc-session-expiry-0", PC, "props.SessionExpiryInterval = int(settings.session_expiry_s)",
     "props.SessionExpiryInterval = 0", "MQ"),
    ("pc-will-qos0", PC, "will.payload, qos=1, retain=will.retain)", "will.payload, qos=0, retain=will.retain)", "MQ"),
    ("pc-will-not-retained", PC, "will.payload, qos=1, retain=will.retain)", "will.payload, qos=1, retain=False)",
     "MQ"),
    ("pc-tls-cert-none", PC, "cert_reqs=ssl.CERT_REQUIRED", "cert_reqs=ssl.CERT_NONE", "MQ"),
    ("pc-keepalive-60", PC, "keepalive=settings.keepalive_s", "keepalive=60", "MQ"),
    ("pc-queue-bounded", PC, "client.max_queued_messages_set(0)", "client.max_queued_messages_set(100)", "MQ"),
    ("pc-failover-port-kept", PC, "client._host, client._port = nodes[index % len(nodes)][:2]",
     "client._host = nodes[index % len(nodes)][0]", "MQ"),
    # backoff.py: the cap, the exponent, the accepted ranges
    ("bo-exponent-plus-one", BO, "self.factor ** min(attempt, 64)", "self.factor ** min(attempt + 1, 64)", "MQ"),
    ("bo-exponent-uncapped", BO, "self.factor ** min(attempt, 64)", "self.factor ** attempt", "MQ"),
    ("bo-min-eq-max-refused", BO, "if not 0 < self.min_s <= self.max_s:", "if not 0 < self.min_s < self.max_s:", "MQ"),
    ("bo-factor-1-refused", BO, "if self.factor < 1:", "if self.factor <= 1:", "MQ"),
    # settings.py: TLS from the url and the files
    ("st-ssl-scheme-plain", ST, 'tls = parts.scheme in ("mqtts", "ssl")', 'tls = parts.scheme == "mqtts"', "ST"),
    ("st-tls-port-1883", ST, "(8883 if tls else 1883)", "(1883 if tls else 1883)", "ST"),
    ("st-ca-without-tls", ST, "if (self.cert_file or self.ca_file) and not tls:", "if self.cert_file and not tls:",
     "ST"),
    # tools/bench/mqtt.py: what is reported, which devices run, what the raw baseline sends
    ("bm-ratio-inverted", BM, '"ratio": round(fedge_s / raw_s, 3)', '"ratio": round(raw_s / fedge_s, 3)', "BM"),
    ("bm-down-total", BM, "down = bytes(max(1, detail[\"bytes_down\"] // devices))",
     "down = bytes(max(1, detail[\"bytes_down\"]))", "BM"),
    ("bm-processes-floor", BM, '"device_processes": -(-devices // PER_PROCESS)',
     '"device_processes": devices // PER_PROCESS', "BM"),
    ("bm-worker-drops-one", BM, "ids[i:i + PER_PROCESS]", "ids[i:i + PER_PROCESS - 1]", "BM"),
    ("bm-reports-unchecked", BM, "if not record.committed or record.reports != devices:",
     "if not record.committed:", "BM"),
    ("bm-raw-publish-qos0", BM, 'c.publish(f"raw/devices/{device_id}/update", payload, qos=1)',
     'c.publish(f"raw/devices/{device_id}/update", payload, qos=0)', "BM"),
    ("bm-raw-answer-qos0", BM, "answer,\n" + " " * 72 + "qos=1)", "answer,\n" + " " * 72 + "qos=0)", "BM"),
    ("bm-model-kb-1000", BM, "n = max(1, update_kb * 1024 // 4)", "n = max(1, update_kb * 1000 // 4)", "BM"),
    ("bm-fd-over-hard", BM, "(min(hard, max(needed, soft)), hard)", "(max(needed, soft), hard)", "BM"),
]
_N = {k: _E + f"test_mqtt_{k}.py" for k in ("link_edges", "publish_edges", "config_edges", "session_mosquitto")}
_N["bench"] = "tests/tools/test_bench_mqtt_edges.py"
AFTER = {
    **dict.fromkeys(("mq-fatal-no-134", "mq-resubscribe-qos0", "mq-attempt-kept", "mq-linklost-never-up",
                     "mq-unsubscribe-keeps-filter", "mq-closed-raises-once", "mq-close-no-disconnect",
                     "pc-keepalive-60"), _N["link_edges"]),
    **dict.fromkeys(("mq-early-ack-lost", "mq-early-refusal-unnamed", "mq-refusals-kept-le", "mq-message-size-ge",
                     "mq-frame-fits-lt", "mq-topic-chars"), _N["publish_edges"]),
    **dict.fromkeys(("pc-will-qos0", "pc-will-not-retained"), _N["session_mosquitto"]),
    **dict.fromkeys(("bo-exponent-uncapped", "bo-min-eq-max-refused", "bo-factor-1-refused", "st-ssl-scheme-plain",
                     "st-tls-port-1883", "st-ca-without-tls"), _N["config_edges"]),
    **dict.fromkeys(("bm-ratio-inverted", "bm-down-total", "bm-processes-floor", "bm-worker-drops-one",
                     "bm-reports-unchecked", "bm-raw-publish-qos0", "bm-raw-answer-qos0", "bm-model-kb-1000",
                     "bm-fd-over-hard"), _N["bench"]),
}
