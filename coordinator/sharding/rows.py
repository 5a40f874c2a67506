"""The shard tables' rows as read back (tables.py, replay.py, privacy.py), checked against what fedge writes.

A worker and a new leader read the round and what the workers counted from the database, which
is an input like any other (row_check.py says why). A value fedge never writes there is
StoreCorrupt naming the DSN, table, column and row, not a JSONDecodeError in a worker's
refresh, a ValueError from np.frombuffer, or a NaN weight merged into the committed model:

    rounds         the open round a worker counts for: ids >= 0, tasks a JSON object of task ids;
                   privacy a dp RoundPlan (its S clips what the workers add)
    shard_sums     data: the float64 sums of the manifest's shapes, finite; count >= 0, and a
                   finite weight > 0 exactly when count > 0 (PartialSum.add refuses weight <= 0)
    shard_updates  shard and seq >= 0, weight finite > 0, payload bytes (its digest: replay.py)
"""

from __future__ import annotations

import numpy as np

from ..dp.round import RoundPlan
from ..row_check import BYTES, COUNT, FINITE, TEXT, checked_json, checked_row, corrupt
from .sums import PartialSum

OPEN_COLUMNS = (("round_id", COUNT), ("model_version", COUNT), ("tasks", TEXT))
SUM_COLUMNS = (("data", BYTES), ("weight", FINITE), ("count", COUNT))
COUNTED_COLUMNS = (("shard", COUNT), ("seq", COUNT), ("device_id", TEXT), ("weight", FINITE), ("payload", BYTES),
                   ("update_id", TEXT), ("digest", TEXT))
TASKS = "a JSON object of task ids"


def _bytes(row) -> tuple:
    """psycopg may hand a BYTEA as a memoryview: as bytes, the rest as read."""
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)


def open_round(where, row) -> tuple[int, int, dict[str, str]]:
    """(round id, model version, device -> task id) of the open rounds row."""
    round_id, version, tasks = checked_row(where, "rounds", OPEN_COLUMNS, tuple(row), key="open round")
    key = f"open round {round_id}"
    asked = checked_json(where, "rounds", "tasks", tasks, dict, key, TASKS)
    if not all(isinstance(t, str) for t in asked.values()):
        raise corrupt(where, "rounds", "tasks", tasks, TASKS, key)
    return round_id, version, asked


def plan(where, round_id: int, text) -> RoundPlan | None:
    """The round's privacy plan (rounds.privacy), None without one."""
    if text is None or text == "":
        return None
    key = f"round {round_id}"
    data = checked_json(where, "rounds", "privacy", text, dict, key, "a JSON dp RoundPlan or NULL")
    try:
        return RoundPlan.from_json(data)
    except ValueError as exc:
        raise corrupt(where, "rounds", "privacy", text, f"a dp RoundPlan ({exc})", key) from None


def partial_sum(where, round_id: int, shard: int, row, shapes) -> PartialSum:
    """One shard_sums row (data, weight, count) as the PartialSum a worker wrote."""
    key = f"round {round_id}, shard {shard}"
    data, weight, count = checked_row(where, "shard_sums", SUM_COLUMNS, _bytes(row), key=key)
    if weight < 0 or (weight > 0) != (count > 0):
        raise corrupt(where, "shard_sums", "weight", weight, f"a weight > 0 exactly when the count ({count}) is",
                      key)
    need = 8 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    if len(data) != need:
        raise corrupt(where, "shard_sums", "data", f"{len(data)} bytes", f"the {need} bytes of the model's float64 "
                      "sums", key)
    partial = PartialSum.from_bytes(data, shapes, weight, count)
    if not all(np.isfinite(v).all() for v in partial.sums.values()):
        raise corrupt(where, "shard_sums", "data", "NaN or Inf", "finite sums", key)
    return partial


def counted(where, round_id: int, row) -> tuple:
    """One shard_updates row (shard, seq, device, weight, payload, update id, digest) of the round."""
    row = checked_row(where, "shard_updates", COUNTED_COLUMNS, _bytes(row), key=f"round {round_id}")
    if not row[3] > 0:
        raise corrupt(where, "shard_updates", "weight", row[3], "a weight > 0", f"round {round_id}, {row[5]!r:.40}")
    return row
