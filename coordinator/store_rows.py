"""The sync store's rows as read back (sql_store.py, store.py), checked against what fedge writes.

Every value a start or a resume reads (the latest model and its tensors, the open round, its
updates and declines, the devices) is checked here before it is used: a value fedge never
writes is StoreCorrupt naming the file, table, column and row (row_check.py). A tensor must
still be an array (a dtype numpy knows and that is no object, a shape of counts, exactly as
many bytes as they say; a Store keeps any values bit for bit, and restart.restore_state
refuses a model that is not finite); an open round must still be one begin_round wrote
(1 <= quorum <= target <= selected, a task for each selected device and no other, events from
selected devices only, each seq once).
"""

from __future__ import annotations

import numpy as np

from .row_check import (
    BYTES,
    BYTES_OR_NULL,
    COUNT,
    COUNT_OR_NULL,
    FINITE,
    FLAG,
    NORM_OR_NULL,
    POSITIVE,
    TEXT,
    checked_json,
    checked_row,
    corrupt,
)
from .stored import StoredDecline, StoredDevice, StoredRound, StoredUpdate

MODEL_COLUMNS = (("version", COUNT), ("extra_groups", TEXT))
TENSOR_COLUMNS = (("kind", TEXT), ("grp", TEXT), ("name", TEXT), ("dtype", TEXT), ("shape", TEXT), ("data", BYTES))
ROUND_COLUMNS = (("round_id", COUNT), ("model_version", COUNT), ("selected", TEXT), ("tasks", TEXT),
                 ("target", COUNT), ("quorum", COUNT), ("started_wall", FINITE), ("deadline_wall", FINITE))
UPDATE_COLUMNS = (("seq", COUNT), ("device_id", TEXT), ("update_id", TEXT), ("digest", TEXT),
                  ("num_examples", POSITIVE), ("payload", BYTES_OR_NULL), ("control", BYTES_OR_NULL),
                  ("reported_norm", NORM_OR_NULL))
LOG_COLUMNS = (("log_offset", COUNT_OR_NULL), ("payload_len", COUNT_OR_NULL), ("control_len", COUNT_OR_NULL))
DECLINE_COLUMNS = (("seq", COUNT), ("device_id", TEXT), ("reason", TEXT))
DEVICE_COLUMNS = (("device_id", TEXT), ("last_seen_wall", FINITE), ("eligible", FLAG), ("reason", TEXT),
                  ("num_examples", COUNT))


def extra_groups(path, version: int, text) -> list[str]:
    groups = checked_json(path, "models", "extra_groups", text, list, f"version {version}")
    if not all(isinstance(g, str) for g in groups) or len(set(groups)) != len(groups):
        raise corrupt(path, "models", "extra_groups", text, "a JSON list of distinct names", f"version {version}")
    return groups


def tensor(path, version: int, groups: list[str], row: tuple) -> tuple[str, str, str, np.ndarray]:
    """(kind, grp, name, array) of one tensors row of `version`; StoreCorrupt for one fedge never wrote."""
    key = f"version {version}"
    kind, grp, name, dtype, shape, data = checked_row(path, "tensors", TENSOR_COLUMNS, tuple(row), key=key)
    key = f"version {version}, {kind} {grp}/{name}"
    if kind not in ("params", "extra") or (grp != "" if kind == "params" else grp not in groups):
        raise corrupt(path, "tensors", "kind", (kind, grp), "params (group '') or an extra group of models."
                      "extra_groups", key)
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.hasobject or dt.kind not in "biuf" or dt.itemsize == 0:
        raise corrupt(path, "tensors", "dtype", dtype, "a numeric numpy dtype", key)
    dims = checked_json(path, "tensors", "shape", shape, list, key)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in dims):
        raise corrupt(path, "tensors", "shape", shape, "a JSON list of counts", key)
    if len(data) != int(np.prod(dims, dtype=object)) * dt.itemsize:
        raise corrupt(path, "tensors", "data", f"{len(data)} bytes", f"the {dims} {dt} its shape and dtype say", key)
    # tuple: reshape([]) would give shape (1,), not the 0-d shape ()
    return kind, grp, name, np.frombuffer(data, dtype=dt).reshape(tuple(dims)).copy()


def open_round(path, row: tuple, privacy, updates: list[StoredUpdate], declines: list[StoredDecline]) -> StoredRound:
    """The open round's row with its events, as begin_round wrote it; StoreCorrupt for one it never wrote."""
    round_id, version, selected, tasks, target, quorum, started, deadline = checked_row(
        path, "rounds", ROUND_COLUMNS, tuple(row), key=f"open round {row[0]!r}")
    key = f"open round {round_id}"

    def bad(column, value, kind):
        return corrupt(path, "rounds", column, value, kind, key)

    picked = checked_json(path, "rounds", "selected", selected, list, key)
    if not all(isinstance(d, str) for d in picked) or len(set(picked)) != len(picked):
        raise bad("selected", selected, "a JSON list of distinct device ids")
    asked = checked_json(path, "rounds", "tasks", tasks, dict, key)
    if set(asked) != set(picked) or not all(isinstance(t, str) for t in asked.values()):
        raise bad("tasks", tasks, "a task id for each selected device")
    # 0 and 0 only where an empty Poisson draw's noise-only round wrote them (noise_round.py): no
    # device selected and a privacy plan. (An async buffer's row selects no device either, K > 0.)
    if 0 in (target, quorum) and (picked or privacy is None or (target, quorum) != (0, 0)):
        column = "target" if target == 0 else "quorum"
        raise bad(column, target if target == 0 else quorum,
                  "an integer > 0 (0 and 0 only in a noise-only round: no device selected, a privacy plan)")
    if quorum > target:
        raise bad("quorum", quorum, f"at most the round's target ({target})")
    if picked and target > len(picked):
        raise bad("target", target, f"at most the {len(picked)} selected devices")
    # what the JSON says is RoundPlan.from_json's to check (dp/budget.py check_open: a ConfigError naming the field)
    plan = None if privacy is None else checked_json(path, "rounds", "privacy", privacy, (dict, list, str, int, float),
                                                     key, "JSON (a dp RoundPlan) or NULL")
    events = sorted(updates + declines, key=lambda e: e.seq)
    for i, event in enumerate(events):
        table = "updates" if isinstance(event, StoredUpdate) else "declines"
        if picked and event.device_id not in asked:
            raise corrupt(path, table, "device_id", event.device_id, "a device the round selected", key)
        if i and event.seq == events[i - 1].seq:
            raise corrupt(path, table, "seq", event.seq, "a seq no other event of the round has", key)
    return StoredRound(round_id, version, tuple(picked), asked, target, quorum, started, deadline, tuple(events), plan)


def update(path, round_id: int, row: tuple, *, in_row: bool = True) -> StoredUpdate:
    """One updates row of the open round; in_row: its payload is in the row (else in the payload
    log, store.RoundStore, and the row's payload and control are NULL)."""
    key = f"round {round_id}, update {row[2]!r:.40}"
    seq, device, update_id, digest, n, payload, control, norm = checked_row(
        path, "updates", UPDATE_COLUMNS, tuple(row), key=key)
    if in_row and payload is None:
        raise corrupt(path, "updates", "payload", None, "bytes (the row has no log_offset)", key)
    return StoredUpdate(seq, device, update_id, digest, n, payload or b"", control or b"", norm)


def log_place(path, round_id: int, update_id: str, row: tuple) -> tuple[int, int, int] | None:
    """(offset, payload length, control length) of a version-4 row's bytes in the payload log,
    or None for an older row that keeps its payload in the row (all three NULL)."""
    key = f"round {round_id}, update {update_id!r:.40}"
    place = checked_row(path, "updates", LOG_COLUMNS, tuple(row), key=key)
    if all(value is None for value in place):
        return None
    for (name, _), value in zip(LOG_COLUMNS, place):
        if value is None:
            raise corrupt(path, "updates", name, value, "an integer >= 0 (the row's other log columns are set)", key)
    return place


def device(path, row: tuple) -> StoredDevice:
    key = f"device {row[0]!r:.40}"
    d, seen, eligible, reason, n = checked_row(path, "devices", DEVICE_COLUMNS, tuple(row), key=key)
    return StoredDevice(d, float(seen), bool(eligible), reason, n)

