"""Rows read back from a state file, checked against what fedge writes there.

A state file is an input like any other: a disk that rotted a page, a restore that mixed two
backups, or a hand edit can leave a value fedge never writes (text in a count, a NULL where
bytes go, a negative length). Each reader names its columns and what it writes in each; a
value that does not hold is StoreCorrupt naming the file, table, column and row, so the start
stops in one line (exit 2) instead of a TypeError from deep in a replay, or a state that is
silently wrong. The async journal (async_mode/journal.py) and the sync store (store_rows.py)
share it.
"""

from __future__ import annotations

import json
import math

from .errors import StoreCorrupt

TEXT, ID, COUNT, POSITIVE = "text", "an integer", "an integer >= 0", "an integer > 0"
FINITE, BYTES, BYTES_OR_NULL = "a finite number", "bytes", "bytes or NULL"
NORM_OR_NULL, COUNT_OR_NULL, FLAG = "a number >= 0 or NULL", "an integer >= 0 or NULL", "0 or 1"
STATE_DB = "the state db"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def holds(value, kind: str) -> bool:
    """Whether `value` is one fedge writes in a column of this kind."""
    return {
        TEXT: isinstance(value, str),
        ID: isinstance(value, int) and not isinstance(value, bool),
        COUNT: _count(value),
        POSITIVE: _count(value) and value > 0,
        FINITE: _number(value) and math.isfinite(value),
        BYTES: isinstance(value, bytes),
        BYTES_OR_NULL: value is None or isinstance(value, bytes),
        NORM_OR_NULL: value is None or (_number(value) and value >= 0 and math.isfinite(value)),
        COUNT_OR_NULL: value is None or _count(value),
        FLAG: value in (0, 1) and not isinstance(value, (float, bool)),
    }[kind]


def corrupt(path, table: str, column: str, value, kind: str, row: str = "", what: str = STATE_DB) -> StoreCorrupt:
    """The error for a value that is not `kind` (row: which row, e.g. "round 3"; "" if the table says)."""
    where = f" ({row})" if row else ""
    return StoreCorrupt(f"{path}: {table}.{column} holds {value!r:.40}{where}, not {kind}: {what} was changed "
                        "outside fedge; restore it from a backup")


def checked_row(path, table: str, columns: tuple[tuple[str, str], ...], row: tuple, *, key: str = "",
                what: str = STATE_DB) -> tuple:
    """The row as read, or StoreCorrupt naming the file, table, column and row (key): a value
    this code never writes means the file was changed by someone else, and resuming from it
    would crash or count it wrongly."""
    for (name, kind), value in zip(columns, row, strict=True):
        if not holds(value, kind):
            raise corrupt(path, table, name, value, kind, key, what)
    return row


def checked_json(path, table: str, column: str, text, want: type | tuple[type, ...], key: str = "",
                 kind: str = ""):
    """The JSON `text` holds, which must be a `want` (list, dict; `kind` says so in words);
    StoreCorrupt if it is no JSON or not one."""
    kind = kind or f"JSON {want.__name__}"
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, want):
        raise corrupt(path, table, column, text, kind, key)
    return value
