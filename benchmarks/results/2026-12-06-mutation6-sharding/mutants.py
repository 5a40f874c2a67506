"""The mutants of the audit: (id, file, text, replacement, group of tests that cover the file);
GROUPS: those tests; AFTER: the tests added for the mutants they missed (plant.py --after)."""

_C = "tests/coordinator/"
_SH, _AS, _RO = _C + "test_sharding.py", _C + "test_sharding_assign.py", _C + "test_sharding_rows.py"
_RD, _SA = _C + "test_sharding_robust_dp.py", _C + "test_sharding_secagg.py"
_RC = _C + "test_sharding_restart_config.py"
GROUPS = {
    "AS": _AS,
    "GR": _SA,
    "LE": f"{_AS} {_SH}",
    "RE": f"{_RD} {_RO} {_RC}",
    "RO": _RO,
    "SU": f"{_SH} {_RD}",
    "TA": f"{_SH} {_AS} {_RO} {_RC}",
    "LD": f"{_AS} {_SH} {_RC}",
    "WO": f"{_SH} {_AS} {_C}test_shard_retained.py {_RD}",
    "PR": f"{_RD} {_RO} {_RC}",
    "SD": _SA,
    "SE": f"{_RC} {_C}test_sign_split_rounds.py {_C}test_weight_cut_log.py",
}
_S = "coordinator/sharding/"
AS, GR, LE, RE, RO, SU = (_S + m + ".py" for m in ("assign", "groups", "lease", "replay", "rows", "sums"))
TA, LD, WO, PR, SD, SE = (_S + m + ".py" for m in ("tables", "leader", "worker", "privacy", "secure_dp", "sealed"))
MUTANTS = [
    # assign.py: home shard while live, else the least-loaded live one, ties to the lowest index
    ("as-place-ties-highest", AS, "key=lambda k: (count[k], k))", "key=lambda k: (count[k], -k))", "AS"),
    ("as-place-no-load-step", AS, "        count[shard] += 1", "        count[shard] += 0", "AS"),
    ("as-place-ignores-loads", AS, "count = {k: loads.get(k, 0) for", "count = {k: 0 for", "AS"),
    ("as-home-no-load", AS, "            loads[home] += 1", "            loads[home] += 0", "AS"),
    # groups.py: floor = max(3, t + 1); min_inputs = max(2, ceil(q n_g / n)); merge forward
    ("gr-min-members-2", GR, "GROUP_MIN_MEMBERS = 3", "GROUP_MIN_MEMBERS = 2", "GR"),
    ("gr-floor-t", GR, "return max(GROUP_MIN_MEMBERS, threshold + 1)", "return max(GROUP_MIN_MEMBERS, threshold)",
     "GR"),
    ("gr-min-inputs-1", GR, "return max(2, math.ceil(", "return max(1, math.ceil(", "GR"),
    ("gr-merge-gt", GR, "if len(pending[1]) >= floor:", "if len(pending[1]) > floor:", "GR"),
    ("gr-last-stands-alone", GR, "        if merged:  # the last", "        if False:  # the last", "GR"),
    # lease.py: the epoch fence, the lock keys read as shards
    ("le-epoch-unchecked", LE, "if row is None or row[0] != epoch:", "if row is None:", "LE"),
    ("le-live-le-k", LE, "0 <= key - SHARD_LOCK_BASE < shards)", "0 <= key - SHARD_LOCK_BASE <= shards)", "LE"),
    # replay.py: the count check, the stored weight, the digest, the order
    ("re-no-mismatch", RE, "        if stored != sealed:", "        if False:", "RE"),
    ("re-weight-one", RE, "UpdateMeta(device_id, float(weight))", "UpdateMeta(device_id, 1.0)", "RE"),
    ("re-tally-sealed-shards-only", RE, "width = max([len(sealed), *(row[0] + 1 for row in rows)])",
     "width = len(sealed)", "RE"),  # the bug fixed here, put back
    ("re-no-digest", RE, "        check_stored_digest(payload,", "        0 and check_stored_digest(payload,", "RE"),
    # rows.py: what a row fedge wrote looks like
    ("ro-weight-zero-ok", RO, "if not row[3] > 0:", "if not row[3] >= 0:", "RO"),
    ("ro-sum-weight-count-unlinked", RO, "if weight < 0 or (weight > 0) != (count > 0):", "if weight < 0:", "RO"),
    ("ro-sum-nan-ok", RO, "if not all(np.isfinite(v).all()", "if False and not all(np.isfinite(v).all()", "RO"),
    ("ro-sum-size-lt", RO, "if len(data) != need:", "if len(data) < need:", "RO"),
    # sums.py: w * float64(delta), merge in order, the mean
    ("su-weight-zero-ok", SU, "if not weight > 0:", "if not weight >= 0:", "SU"),
    ("su-unweighted", SU, "            scaled *= weight", "            scaled *= 1.0", "SU"),
    ("su-merge-aliases", SU, "total.sums[name] = value.copy()", "total.sums[name] = value", "SU"),
    ("su-to-bytes-unsorted", SU, "for k in sorted(self.sums))", "for k in self.sums)", "SU"),
    ("su-mean-of-nothing", SU, "    if total.count == 0:\n        raise", "    if False:\n        raise", "SU"),
    # tables.py: the seal, the open round, the stored assignment, counted, reassign, prune
    ("ta-count-after-seal", TA, "            if sealed:\n", "            if False:\n", "TA"),
    ("ta-count-closed-round", TA, "if status is None or status[0] != \"open\":", "if status is None:", "TA"),
    ("ta-count-no-home-default", TA, "held.get(d, shard_for(d, shards)) == shard", "held.get(d, shard) == shard",
     "TA"),
    ("ta-count-not-marked", TA, "UPDATE shard_assignment SET counted = true", "UPDATE shard_assignment SET counted = "
     "false", "TA"),
    ("ta-reassign-counted", TA, "shard = ANY(%s) AND NOT counted", "shard = ANY(%s)", "TA"),
    ("ta-seal-only-k", TA, "for k in range(max([shards, *(k + 1 for k in beyond)]))]", "for k in range(shards)]", "TA"),
    ("ta-prune-lt", TA, "WHERE round_id <= %s\"", "WHERE round_id < %s\"", "TA"),
    # leader.py: takeover time, liveness reads, resend, poll, prune
    ("ld-takeover-gt", LD, "now - since >= self.config.shard_takeover_s", "now - since > self.config.shard_takeover_s",
     "LD"),
    ("ld-dead-never-forgiven", LD, "                self._dead_since.pop(shard, None)", "                pass", "LD"),
    ("ld-resend-waits", LD, "            rnd.task_sent.pop(device_id, None)", "            pass", "LD"),
    ("ld-resend-declined", LD, "            if not rnd.machine.expects(device_id):  # it declined",
     "            if False:  # it declined", "LD"),  # the bug fixed here, put back
    ("ld-no-live-begins", LD, "            if not self._live:\n", "            if False:\n", "LD"),
    # worker.py: the clip, the round refresh, the task's shard, declines, duplicates, bursts
    ("wo-no-clip", WO, "bounded(verdict.delta, self.clip)", "verdict.delta", "WO"),
    ("wo-refresh-first-round-only", WO, "elif self.ctx is None or self.ctx.round_id != row[0]:",
     "elif self.ctx is None:", "WO"),
    ("wo-task-shard-unchecked", WO, "if where[0] != self.shard or update.shard != self.shard:",
     "if where[0] != self.shard:", "WO"),
    ("wo-declined-counted", WO, "and not keys\n                                 and d not in declined,",
     "and not keys,", "WO"),
    ("wo-duplicate-refused", WO, "self._ack(update, True, \"duplicate\")", "self._ack(update, False, \"duplicate\")",
     "WO"),
    ("wo-again-dropped", WO, "        if again:\n", "        if False:\n", "WO"),
    # privacy.py: the weight-1 check, the clip, the noise of a one-update round
    ("pr-unbounded-ok", PR, "            if total.weight != total.count:", "            if False:", "PR"),
    ("pr-bounded-unclipped", PR, "return delta if clip is None else clip_to_norm(delta, clip)[0]", "return delta",
     "PR"),
    ("pr-one-update-unnoised", PR, "            if total.count:", "            if total.count > 1:", "PR"),
    # secure_dp.py: each group's noise for its own minimum; the total
    ("sd-noise-for-members", SD, "spec.clip_range, d, g.min_inputs, len(g.members)",
     "spec.clip_range, d, len(g.members), len(g.members)", "SD"),
    ("sd-record-std-members", SD, "p.gamma * p.sigma * math.sqrt(g.min_inputs)",
     "p.gamma * p.sigma * math.sqrt(len(g.members))", "SD"),
    # sealed.py: the leader adds nothing itself
    ("se-add-accepted", SE, "        raise TypeError(\"a sharded round's updates are counted", "        return  # (\"a "
     "sharded round's updates are counted", "SE"),
]
_E, _P = _C + "test_sharding_edges.py", _C + "test_sharding_edges_pg.py"
AFTER = {
    **dict.fromkeys(["gr-min-inputs-1", "su-weight-zero-ok", "su-to-bytes-unsorted", "su-mean-of-nothing",
                     "pr-unbounded-ok", "pr-one-update-unnoised", "se-add-accepted"], _E),
    **dict.fromkeys(["ro-sum-size-lt", "re-tally-sealed-shards-only", "ta-count-after-seal", "ta-count-closed-round",
                     "ta-count-no-home-default", "ld-takeover-gt", "ld-dead-never-forgiven", "ld-resend-declined",
                     "wo-task-shard-unchecked", "wo-duplicate-refused"], _P),
}
