"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_E = "tests/edge_runtime/"
GROUPS = {
    "JO": (
        _E
        + "test_crash_windows.py "
        + _E
        + "test_damaged_inputs.py "
        + _E
        + "test_device_leftovers.py "
        + _E
        + "test_durable_writes.py "
        + _E
        + "test_shard_topics.py"
    ),
    "UP": _E + "test_shard_topics.py " + _E + "test_crash_windows.py " + _E + "test_device.py",
    "DE": (
        _E
        + "test_hostile_artifacts.py "
        + _E
        + "test_model_id_paths.py "
        + _E
        + "test_fetched_models.py "
        + _E
        + "test_device.py"
    ),
    "SU": _E + "test_state_key.py " + _E + "test_secagg_state.py",
    "UN": _E + "test_unreadable_tasks.py " + _E + "test_unreadable_evals.py " + _E + "test_crash_windows.py",
}
JO, PE, SE, UP = (
    "edge_runtime/journal.py",
    "edge_runtime/pending.py",
    "edge_runtime/seen_tasks.py",
    "edge_runtime/uplink.py",
)
DE, FE, FM = "edge_runtime/delivery.py", "edge_runtime/fetch.py", "edge_runtime/fetched_models.py"
SU, SH, UN = "edge_runtime/superseded.py", "edge_runtime/state_health.py", "edge_runtime/unanswered.py"
MUTANTS = [
    # journal.py: stage, keep, apply; recover; acks; what was received
    (
        "jo-keep-failed-no-discard",
        JO,
        "                store.discard_staged(update_id)\n            raise",
        "                pass\n            raise",
        "JO",
    ),
    (
        "jo-keep-size-ge",
        JO,
        "if len(payload) > self.max_message_bytes:",
        "if len(payload) >= self.max_message_bytes:",
        "JO",
    ),
    (
        "jo-recover-drops-kept",
        JO,
        "                        store.commit_staged(update_id)",
        "                        store.discard_staged(update_id)",
        "JO",
    ),
    (
        "jo-recover-keeps-unkept",
        JO,
        "self.home.name, update_id)\n                    store.discard_staged(update_id)",
        "self.home.name, update_id)\n                    pass",
        "JO",
    ),
    (
        "jo-contains-no-kept",
        JO,
        "return task_id in self.seen or task_id in self._kept_tasks()",
        "return task_id in self.seen",
        "JO",
    ),
    (
        "jo-ack-other-task",
        JO,
        "if kept is not None and _task_of(kept.payload) != task_id:",
        "if kept is not None and _task_of(kept.payload) is None:",
        "JO",
    ),
    (
        "jo-ack-no-remove",
        JO,
        "        self.pending.remove(update_id)\n        return True",
        "        return True",
        "JO",
    ),
    (
        "jo-ack-no-round",
        JO,
        "self.seen.answered(task_id, round_id)  # before",
        "self.seen.answered(task_id)  # before",
        "JO",
    ),
    (
        "jo-interrupted-with-kept",
        JO,
        "for task_id, round_id in self.seen.unanswered() if task_id not in kept]",
        "for task_id, round_id in self.seen.unanswered()]",
        "JO",
    ),
    (
        "jo-foreign-any-update",
        JO,
        "isinstance(update, Update) and update.update_id == item.update_id",
        "isinstance(update, Update)",
        "JO",
    ),
    # pending.py: the kept updates on disk
    ("pe-no-utime", PE, "        os.utime(path, (written, written))\n", "", "JO"),
    ("pe-remove-no-unlink", PE, "self._path(item.round_id, update_id).unlink(missing_ok=True)", "pass", "JO"),
    (
        "pe-not-durable",
        PE,
        "atomic_write_bytes(path, payload)",
        "atomic_write_bytes(path, payload, durable=False)",
        "JO",
    ),
    ("pe-older-ge", PE, "if now - written > seconds:", "if now - written >= seconds:", "JO"),
    ("pe-older-newest-first", PE, "key=lambda pair: pair[0])", "key=lambda pair: -pair[0])", "JO"),
    ("pe-max-bytes-ge", PE, "if path.stat().st_size > max_bytes:", "if path.stat().st_size >= max_bytes:", "JO"),
    # seen_tasks.py
    (
        "se-add-kept-plus1",
        SE,
        "        while len(self._rows) > self.kept:\n            self._rows.pop(next(iter(self._rows)))\n"
        "        self._save()",
        "        while len(self._rows) > self.kept + 1:\n            self._rows.pop(next(iter(self._rows)))\n"
        "        self._save()",
        "JO",
    ),
    (
        "se-answered-no-save",
        SE,
        "            row[1] = True\n            self._save()",
        "            row[1] = True",
        "JO",
    ),
    (
        "se-answered-no-recreate",
        SE,
        "if row is None and round_id is not None:",
        "if row is None and round_id is None:",
        "JO",
    ),
    ("se-load-size-ge", SE, "if size > self.kept * _ROW_BYTES:", "if size >= self.kept * _ROW_BYTES:", "JO"),
    ("se-load-oldest", SE, "entries[-self.kept:]", "entries[:self.kept]", "JO"),
    ("se-legacy-unanswered", SE, "return [row, None, True]", "return [row, None, False]", "JO"),
    # uplink.py: resend until the Ack, backoff, stale drops, declines
    ("up-backoff-4", UP, "MAX_BACKOFF_STEPS = 5", "MAX_BACKOFF_STEPS = 4", "UP"),
    ("up-no-backoff", UP, "now + self.republish_s * 2 ** self.unacked_resends", "now + self.republish_s", "UP"),
    (
        "up-due-le",
        UP,
        "if not len(pending) or now < self.next_republish:",
        "if not len(pending) or now <= self.next_republish:",
        "UP",
    ),
    (
        "up-acked-no-reset",
        UP,
        "    def acked(self) -> None:\n        self.unacked_resends = 0",
        "    def acked(self) -> None:\n        pass",
        "UP",
    ),
    ("up-stale-kept", UP, "            pending.remove(stale.update_id)\n", "            pass\n", "UP"),
    (
        "up-decline-not-answered",
        UP,
        "        self.journal.answered(decline.task_id)  # after",
        "        pass  # after",
        "UP",
    ),
    (
        "up-retarget-ignored",
        UP,
        "if shard >= 0 and self.shards.get(update.task_id, shard) != shard:",
        "if False:",
        "UP",
    ),
    # delivery.py: download limits, timeouts, the installed model's hash
    (
        "de-per-download-gt",
        DE,
        "if len(entry.tasks) >= TASKS_PER_DOWNLOAD:",
        "if len(entry.tasks) > TASKS_PER_DOWNLOAD:",
        "DE",
    ),
    ("de-downloads-gt", DE, "if len(self.waiting) >= MAX_DOWNLOADS:", "if len(self.waiting) > MAX_DOWNLOADS:", "DE"),
    (
        "de-timeout-ge",
        DE,
        "if now - entry.started > self.fetch_timeout_s:",
        "if now - entry.started >= self.fetch_timeout_s:",
        "DE",
    ),
    (
        "de-timeout-no-discard",
        DE,
        "                entry.download.discard()\n                for task",
        "                for task",
        "DE",
    ),
    (
        "de-installed-hash-skipped",
        DE,
        "if task.manifest_sha256 and sha256_file(Path(directory) / MANIFEST_FILE) != task.manifest_sha256:",
        "if False:",
        "DE",
    ),
    (
        "de-expired-model-wait-only",
        DE,
        "self.model_waits.expired(now, self.model_wait_s + self.fetch_timeout_s)",
        "self.model_waits.expired(now, self.model_wait_s)",
        "DE",
    ),
    ("de-prune-waiting", DE, "{item.model_id, *self.waiting}", "{item.model_id}", "DE"),
    (
        "de-reconnect-no-inline",
        DE,
        "        for task in self.model_waits.asked_inline():\n            self._request_inline(task)\n",
        "",
        "DE",
    ),
    # fetch.py: digests, sizes, names, the final check
    ("fe-manifest-digest-skipped", FE, "if digest != self.manifest_sha256:", "if False:", "DE"),
    ("fe-file-digest-skipped", FE, "if digest != expected:", "if False:", "DE"),
    ("fe-bytes-ge", FE, "if self.staged_bytes > self.max_bytes:", "if self.staged_bytes >= self.max_bytes:", "DE"),
    ("fe-files-ge", FE, "if len(manifest.files) > MAX_FILES:", "if len(manifest.files) >= MAX_FILES:", "DE"),
    ("fe-name-max-lt", FE, "len(part.encode()) <= NAME_MAX", "len(part.encode()) < NAME_MAX", "DE"),
    (
        "fe-no-reverify",
        FE,
        "load_manifest(self.staging, verify=True)",
        "load_manifest(self.staging, verify=False)",
        "DE",
    ),
    ("fe-no-mark", FE, "        (self.staging / FETCHED_MARK).touch()", "        pass", "DE"),
    # fetched_models.py
    ("fm-keep-plus1", FM, "for folder in fetched[keep:]:", "for folder in fetched[keep + 1:]:", "DE"),
    ("fm-mru-goes", FM, "reverse=True)", "reverse=False)", "DE"),
    (
        "fm-mark-used-noop",
        FM,
        "    if (folder / FETCHED_MARK).is_file():\n        (folder / FETCHED_MARK).touch()",
        "    if (folder / FETCHED_MARK).is_file():\n        pass",
        "DE",
    ),
    # superseded.py, state_health.py
    ("su-keep-3", SU, "KEEP_SUPERSEDED = 2", "KEEP_SUPERSEDED = 3", "SU"),
    (
        "su-restore-oldest",
        SU,
        "for _, short, back in reversed(_folders(folder)):",
        "for _, short, back in _folders(folder):",
        "SU",
    ),
    ("su-meta-stays", SU, "if name == KEYED[0] and (folder / _WITH_STATE).is_file():", "if False:", "SU"),
    ("sh-recheck-no-key", SH, "if not self._readable(m, key)}", "if not self._readable(m, None)}", "SU"),
    ("sh-file-in-place-ok", SH, "return not os.path.lexists(folder)", "return True", "SU"),
    # unanswered.py
    (
        "un-answered-now-declined",
        UN,
        "        if task_id in answered_now:\n            continue",
        "        if False:\n            continue",
        "UN",
    ),
    (
        "un-known-declined-again",
        UN,
        "    if known:\n        uplink.repeat_decline",
        "    if False:\n        uplink.repeat_decline",
        "UN",
    ),
    ("un-other-device", UN, "ids[0] and ids[-1] == device_id", "ids[0]", "UN"),
]
_J, _U = _E + "test_journal_edges.py", _E + "test_uplink_edges.py"
_D, _S = _E + "test_delivery_edges.py", _E + "test_superseded_edges.py"
AFTER = {
    **dict.fromkeys(
        [
            "jo-keep-size-ge",
            "jo-ack-other-task",
            "se-add-kept-plus1",
            "se-load-size-ge",
            "se-load-oldest",
            "se-legacy-unanswered",
            "un-answered-now-declined",
        ],
        _J,
    ),
    **dict.fromkeys(["up-backoff-4", "up-no-backoff", "up-due-le", "up-acked-no-reset", "up-stale-kept"], _U),
    **dict.fromkeys(
        [
            "de-timeout-ge",
            "de-expired-model-wait-only",
            "de-prune-waiting",
            "de-reconnect-no-inline",
            "fe-manifest-digest-skipped",
            "fe-file-digest-skipped",
            "fe-files-ge",
            "fe-name-max-lt",
            "fe-no-reverify",
            "fm-mark-used-noop",
        ],
        _D,
    ),
    **dict.fromkeys(["su-keep-3", "su-restore-oldest", "su-meta-stays", "sh-file-in-place-ok"], _S),
}
