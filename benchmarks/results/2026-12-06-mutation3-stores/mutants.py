"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests (the ones that existed at 68132c3, found by grep for keep_rounds,
LeftOut, sign_split_ids); AFTER: the tests added for the mutants they missed (plant.py --after)."""

GROUPS = {
    "STORE": (
        "tests/coordinator/test_store_protocol.py "
        "tests/coordinator/test_keep_rounds.py "
        "tests/coordinator/test_store.py "
        "tests/coordinator/test_pg_store.py"
    ),
    "CFG": "tests/coordinator/test_keep_rounds.py tests/test_config_fuzz.py -k keep_rounds",
    "LO": (
        "tests/coordinator/test_sign_split_rounds.py "
        "tests/coordinator/test_sign_split_async.py "
        "tests/coordinator/test_left_out_log.py "
        "tests/coordinator/test_exclusion_log.py "
        "tests/coordinator/test_weight_cut_log.py"
    ),
    "SEAL": "tests/coordinator/test_sign_split_rounds.py tests/coordinator/test_sharding_sign_split.py",
}
SQ, ME, ST, PG = (
    "coordinator/sql_store.py",
    "coordinator/memory_store.py",
    "coordinator/store.py",
    "coordinator/pg_store.py",
)
CF, SV, LO, SE = (
    "coordinator/config.py",
    "coordinator/server.py",
    "coordinator/left_out.py",
    "coordinator/sharding/sealed.py",
)
CUT = "cutoff = round_id - self.keep_rounds"
ROWS = "DELETE FROM rounds WHERE status <> 'open' AND round_id <= ?"
EVAL = "seq < COALESCE((SELECT seq FROM evaluations WHERE round_id > ? "
MUTANTS = [
    # sql_store.py: SQLite and PostgreSQL
    ("sq-keep-n+1", SQ, CUT, CUT + " - 1", "STORE"),
    ("sq-keep-n-1", SQ, CUT, CUT + " + 1", "STORE"),
    ("sq-rows-lt", SQ, ROWS, ROWS.replace("<= ?", "< ?"), "STORE"),
    ("sq-rows-open-too", SQ, ROWS, "DELETE FROM rounds WHERE round_id <= ?", "STORE"),
    ("sq-rows-committed-only", SQ, ROWS, ROWS.replace("status <> 'open'", "status = 'committed'"), "STORE"),
    ("sq-rows-abandoned-only", SQ, ROWS, ROWS.replace("status <> 'open'", "status = 'abandoned'"), "STORE"),
    ("sq-eval-ge", SQ, EVAL, EVAL.replace("round_id > ?", "round_id >= ?"), "STORE"),
    ("sq-eval-le", SQ, EVAL, EVAL.replace("seq < ", "seq <= "), "STORE"),
    ("sq-eval-all-kept", SQ, "(SELECT MAX(seq) FROM evaluations) + 1)", "(SELECT MAX(seq) FROM evaluations))", "STORE"),
    ("sq-eval-none-kept", SQ, "(SELECT MAX(seq) FROM evaluations) + 1)", "0)", "STORE"),
    ("sq-eval-last-kept", SQ, "round_id > ? \"\n                   \"ORDER BY seq LIMIT 1)",
     "round_id > ? \"\n                   \"ORDER BY seq DESC LIMIT 1)", "STORE"),
    ("sq-eval-drop", SQ, 'db.execute("DELETE FROM evaluations', 'None and db.execute("DELETE FROM evaluations',
     "STORE"),
    ("sq-off-lt", SQ, "if self.keep_rounds <= 0:\n            return\n        cutoff",
     "if self.keep_rounds < 0:\n            return\n        cutoff", "STORE"),
    ("sq-prune-dropped", SQ, "        self._prune_rounds(db, round_id)\n", "", "STORE"),
    ("sq-prune-keys", SQ, "(round_id - self.keep_key_rounds,))\n        self._prune_rounds",
     "(round_id - (self.keep_rounds or self.keep_key_rounds),))\n        self._prune_rounds", "STORE"),
    ("st-rs-keep-0", ST, "        self.keep_rounds = keep_rounds\n        _refuse",
     "        self.keep_rounds = 0\n        _refuse", "STORE"),
    ("st-open-store", ST, '"keep_rounds": config.keep_rounds}', '"keep_rounds": 0}', "STORE"),
    ("pg-keep-0", PG, "        self.keep_rounds = keep_rounds\n", "        self.keep_rounds = 0\n", "STORE"),
    ("sq-check-neg", SQ, "    if keep_rounds < 0:\n        raise ValueError",
     "    if keep_rounds < -1:\n        raise ValueError", "STORE"),
    # memory_store.py
    ("me-keep-n+1", ME, CUT, CUT + " - 1", "STORE"),
    ("me-keep-n-1", ME, CUT, CUT + " + 1", "STORE"),
    ("me-rows-lt", ME, "next(iter(self.records)) <= cutoff", "next(iter(self.records)) < cutoff", "STORE"),
    ("me-eval-lt", ME, "self.evaluations[0][0] <= cutoff", "self.evaluations[0][0] < cutoff", "STORE"),
    ("me-eval-if", ME, "while self.evaluations and", "if self.evaluations and", "STORE"),
    ("me-eval-drop", ME, "while self.evaluations and", "while False and", "STORE"),
    ("me-keys-keep-rounds", ME, "deque(maxlen=keep_key_rounds)", "deque(maxlen=keep_rounds or keep_key_rounds)",
     "STORE"),
    ("me-off-lt", ME, "if self.keep_rounds <= 0:", "if self.keep_rounds < 0:", "STORE"),
    ("me-prune-dropped", ME, "        self._prune_rounds(round_id)\n", "", "STORE"),
    ("sv-memory-keep", SV, "MemoryStore(keep_rounds=config.keep_rounds)", "MemoryStore()", "STORE"),
    # config.py
    ("cf-neg", CF, "if self.keep_rounds < 0:", "if self.keep_rounds < -1:", "CFG"),
    ("cf-zero-refused", CF, "if self.keep_rounds < 0:", "if self.keep_rounds < 1:", "CFG"),
    # left_out.py and sealed.py
    ("lo-once-off", LO, "if round_id == self.noted_round:", "if False:", "LO"),
    ("lo-never-set", LO, "        self.noted_round = round_id\n", "", "LO"),
    ("lo-once-ever", LO, "if round_id == self.noted_round:", "if self.noted_round is not None:", "LO"),
    ("lo-sign-count-1", LO, "getattr(metrics, kind).inc(len(ids))", "getattr(metrics, kind).inc(1)", "LO"),
    ("se-sign-none", SE, 'return getattr(self.inner, "sign_split_ids", [])', "return []", "SEAL"),
]
ORACLE = "tests/coordinator/test_keep_rounds_oracle.py"
AFTER = {
    "sq-rows-open-too": ORACLE,  # equivalent: the closing round was the one open round, and is closed by then
    "sq-eval-all-kept": ORACLE,
    "sq-eval-none-kept": ORACLE,
    "me-eval-if": ORACLE,
}
