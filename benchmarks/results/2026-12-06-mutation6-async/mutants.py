"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_C = "tests/coordinator/"


def _tests(*names: str) -> str:
    return " ".join(_C + name + ".py" for name in names)


GROUPS = {
    "MA": _tests("test_async", "test_async_server"),
    "CF": _tests("test_async", "test_async_restart_config"),
    "WA": _tests("test_async_server", "test_async_unlucky"),
    "JO": _tests("test_async_restart", "test_async_journal_file", "test_group_commit"),
    "SV": _tests(
        "test_async_server",
        "test_async_unlucky",
        "test_async_boundaries",
        "test_async_restart",
        "test_checkin_limit",
        "test_async_hostile",
        "test_async_stop",
        "test_async_dp_guard",
        "test_async_dp_stale",
        "test_async_restart_config",
    ),
    "GC": _tests("test_group_commit", "test_store_protocol"),
    "RS": _tests(
        "test_restart",
        "test_store_rows_damaged",
        "test_sharding_restart_config",
        "test_dp_restart_config",
        "test_async_restart_config",
        "test_robust_restart",
    ),
}
_A = "coordinator/async_mode/"
MA, CF, WA, JO, SV = (_A + n + ".py" for n in ("machine", "config", "waiting", "journal", "server"))
GC, RS = "coordinator/group_commit.py", "coordinator/restart.py"
MUTANTS = [
    # machine.py: the transition table
    (
        "ma-expire-lt",
        MA,
        "if f.deadline <= event.now]\n        kept = tuple((d, f) for d, f in m.flights if f.deadline > event.now)",
        "if f.deadline < event.now]\n        kept = tuple((d, f) for d, f in m.flights if f.deadline >= event.now)",
        "MA",
    ),
    ("ma-free-ge", MA, "if free > 0:", "if free >= 0:", "MA"),
    ("ma-arrived-any-task", MA, "if flight is None or flight.task_id != event.task_id:", "if flight is None:", "MA"),
    ("ma-stale-ge", MA, "if s > m.max_staleness:", "if s >= m.max_staleness:", "MA"),
    ("ma-stale-keeps-flight", MA, "return replace(m, flights=m._without(event.device_id)), [\n", "return m, [\n", "MA"),
    ("ma-flush-gt", MA, "if buffered >= m.buffer_size else", "if buffered > m.buffer_size else", "MA"),
    (
        "ma-dropped-keeps-flight",
        MA,
        "        return replace(m, flights=m._without(event.device_id)), []\n",
        "        return m, []\n",
        "MA",
    ),
    ("ma-flushed-no-reset", MA, "version=m.version + 1, buffered=0)", "version=m.version + 1)", "MA"),
    # config.py: validation and the refusals
    ("cf-buffer-max-lt", CF, "1 <= self.buffer_size <= MAX_FLEET", "1 <= self.buffer_size < MAX_FLEET", "CF"),
    ("cf-staleness-0-refused", CF, "if self.max_staleness < 0:", "if self.max_staleness <= 0:", "CF"),
    (
        "cf-constant-keeps-exponent",
        CF,
        'if self.staleness == "polynomial" else 0.0',
        "if self.staleness else 0.0",
        "CF",
    ),
    ("cf-postgres-allowed", CF, '(bool(cfg.state_dsn), "async_postgres"', '(False, "async_postgres"', "CF"),
    ("cf-model-parts-gt-256", CF, "(cfg.model_part_bytes > 0,", "(cfg.model_part_bytes > 256,", "CF"),
    # waiting.py: why an open buffer waits
    ("wa-full-gt", WA, "if buffered >= k or", "if buffered > k or", "WA"),
    ("wa-in-flight-ignored", WA, "any(d in in_flight or (", "any((", "WA"),
    (
        "wa-limit-le",
        WA,
        "(given.get(d, 0) < limit and d not in silent)",
        "(given.get(d, 0) <= limit and d not in silent)",
        "WA",
    ),
    ("wa-silent-ignored", WA, "(given.get(d, 0) < limit and d not in silent)", "(given.get(d, 0) < limit)", "WA"),
    # journal.py: what a kill -9 must not lose
    ("jo-not-full-sync", JO, "'FULL' if durable else 'NORMAL'", "'NORMAL'", "JO"),
    (
        "jo-update-keeps-task",
        JO,
        'row.reported_norm))\n            db.execute("DELETE FROM async_tasks WHERE task_id = ?", (task_id,))',
        "row.reported_norm))",
        "JO",
    ),
    ("jo-norm-not-read", JO, 'bytes(row[9] or b""), row[10])', 'bytes(row[9] or b""), None)', "JO"),
    ("jo-replay-reversed", JO, "WHERE buffer_id = ? ORDER BY seq", "WHERE buffer_id = ? ORDER BY seq DESC", "JO"),
    ("jo-forget-payload-lt", JO, "control = NULL WHERE buffer_id <= ?", "control = NULL WHERE buffer_id < ?", "JO"),
    (
        "jo-forget-keys-one-more",
        JO,
        "(closed_buffer - self.keep_buffers,)",
        "(closed_buffer - self.keep_buffers - 1,)",
        "JO",
    ),
    (
        "jo-memory-update-keeps-task",
        JO,
        "self._updates[key] = row\n        self._tasks.pop(task_id, None)",
        "self._updates[key] = row",
        "JO",
    ),
    # server.py: the shell's decisions
    (
        "sv-resume-keeps-second-task",
        SV,
        "            else:  # not written by this code; keep the first\n"
        "                self.journal.drop_task(t.task_id)",
        "            else:  # not written by this code; keep the first\n                pass",
        "SV",
    ),
    (
        "sv-resume-k-from-config",
        SV,
        "buffered=len(rows), buffer_size=stored.target)",
        "buffered=len(rows), buffer_size=a.buffer_size)",
        "SV",
    ),
    (
        "sv-resume-no-contributions",
        SV,
        "self._contributions = Counter(row.device_id for row in rows)",
        "self._contributions = Counter()",
        "SV",
    ),
    (
        "sv-send-after-deadline",
        SV,
        "or flight.deadline <= now:\n            return",
        "or flight.deadline < now:\n            return",
        "SV",
    ),
    (
        "sv-stale-keeps-task",
        SV,
        '== "stale_update":  # its flight is gone: so is its task\n'
        "                    self.journal.drop_task(report.task_id)",
        '== "stale_update":  # its flight is gone: so is its task\n                    pass',
        "SV",
    ),
    (
        "sv-decline-no-rest",
        SV,
        "self._rest[decline.device_id] = now + self.config.pace_declined_s",
        "self._rest[decline.device_id] = now",
        "SV",
    ),
    ("sv-expire-not-silent", SV, "self._silent.add(action.device_id)", "pass", "SV"),
    (
        "sv-limit-dp-resumed",
        SV,
        "if self.privacy.enabled or (self.round is not None and self.round.privacy is not None):",
        "if self.privacy.enabled:",
        "SV",
    ),
    (
        "sv-limit-floor",
        SV,
        "math.ceil(self.machine.buffer_size / max(1, present))",
        "self.machine.buffer_size // max(1, present)",
        "SV",
    ),
    (
        "sv-limit-resting-counts",
        SV,
        "last_seen <= window and self._rest.get(d, 0.0) <= now))",
        "last_seen <= window))",
        "SV",
    ),
    (
        "sv-dispatch-limit-le",
        SV,
        "and self._contributions[d] < limit and",
        "and self._contributions[d] <= limit and",
        "SV",
    ),
    ("sv-dispatch-keeps-throttle", SV, "rnd.task_sent.pop(device_id, None)", "pass", "SV"),
    ("sv-refused-keeps-buffered", SV, "            self.machine = replace(self.machine, buffered=0)\n", "", "SV"),
    # group_commit.py
    (
        "gc-round-change-no-flush",
        GC,
        "self._round_id != round_id:\n            self.flush()",
        "self._round_id != round_id:\n            pass",
        "GC",
    ),
    (
        "gc-ack-at-once",
        GC,
        "        if self._updates:\n            self._acks.append(send)",
        "        if False:\n            self._acks.append(send)",
        "GC",
    ),
    (
        "gc-read-before-write",
        GC,
        "            self.flush()\n            return value(*args, **kwargs)",
        "            return value(*args, **kwargs)",
        "GC",
    ),
    # restart.py: what a restarted sync coordinator resumes
    (
        "rs-deadline-full-again",
        RS,
        "now + (stored.deadline_wall - wall))",
        "now + (stored.deadline_wall - stored.started_wall))",
        "RS",
    ),
    (
        "rs-version-unchecked",
        RS,
        "    if stored.model_version != version:\n        raise",
        "    if False:\n        raise",
        "RS",
    ),
    ("rs-decline-not-remembered", RS, "rnd.decline_from.add(event.device_id)", "pass", "RS"),
    ("rs-claims-zero", RS, "(value <= 0).any():", "(value < 0).any():", "RS"),
    (
        "rs-extra-dtype-unchecked",
        RS,
        "(value.dtype, value.shape) != (like.dtype, like.shape)",
        "value.shape != like.shape",
        "RS",
    ),
]
AFTER = {
    **dict.fromkeys(
        ["cf-buffer-max-lt", "cf-postgres-allowed", "cf-model-parts-gt-256"], _tests("test_async_config_edges")
    ),
    **dict.fromkeys(["wa-full-gt", "wa-in-flight-ignored"], _tests("test_async_waiting_edges")),
    **dict.fromkeys(
        [
            "jo-not-full-sync",
            "jo-norm-not-read",
            "jo-replay-reversed",
            "jo-forget-payload-lt",
            "jo-forget-keys-one-more",
            "jo-memory-update-keeps-task",
        ],
        _tests("test_async_journal_edges"),
    ),
    **dict.fromkeys(
        ["sv-resume-keeps-second-task", "sv-send-after-deadline", "sv-stale-keeps-task", "sv-limit-resting-counts"],
        _tests("test_async_server_edges"),
    ),
    **dict.fromkeys(["gc-round-change-no-flush", "gc-read-before-write"], _tests("test_group_commit_edges")),
    **dict.fromkeys(["rs-version-unchecked", "rs-extra-dtype-unchecked"], _tests("test_restart_edges")),
}
