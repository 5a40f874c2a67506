"""Closed rounds' and evaluations' records as read back (sql_store.py round_records, evaluation_records).

A record is the JSON of a RoundRecord (records.py) or an EvalRecord (evaluation.py, less its
per-device numbers), written by the transaction that closed it. Read back, each must still be
one: a JSON object with no field the dataclass lacks, every field it has without a default,
and each value of the field's type (counts >= 0, finite numbers, text, flags, a name -> text
or count map). A value fedge never writes is StoreCorrupt naming the file, table, row and
field (row_check.py), not a JSONDecodeError, or a NaN or a text count handed on as a record.
A field missing that has a default (train_loss, added later) is a record of an older version.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from .row_check import COUNT, FINITE, TEXT, checked_json, corrupt, holds

_FLAG = "true or false"


def _fits(value, kind: str) -> bool:
    """Whether `value` is one fedge writes for a field annotated `kind`."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind.endswith(" | None"):
        return value is None or _fits(value, kind[: -len(" | None")])
    if kind.startswith("dict[str, "):
        return isinstance(value, dict) and all(_fits(v, kind[len("dict[str, "):-1]) for v in value.values())
    return holds(value, {"int": COUNT, "float": FINITE, "str": TEXT}.get(kind, kind))


def _says(kind: str) -> str:
    """`kind` in words."""
    if kind.endswith(" | None"):
        return _says(kind[: -len(" | None")]) + " or null"
    if kind.startswith("dict[str, "):
        return f"a JSON object, each value {_says(kind[len('dict[str, '):-1])}"
    return {"int": COUNT, "float": FINITE, "str": TEXT, "bool": _FLAG}[kind]


def checked_record(path, table: str, text, cls: type, key: str, dropped: tuple[str, ...] = ()) -> dict:
    """The record `text` holds, a JSON `cls` less its `dropped` fields (never stored); StoreCorrupt
    naming table.record, the row (key) and the field."""
    kind = f"a JSON {cls.__name__}"
    record = checked_json(path, table, "record", text, dict, key, kind)
    known = {f.name: f for f in fields(cls) if f.name not in dropped}
    for name in record:
        if name not in known:
            raise corrupt(path, table, "record", text, f"{kind} (it has no field {name!r:.30})", key)
    for name, f in known.items():
        if name not in record:
            if f.default is MISSING and f.default_factory is MISSING:
                raise corrupt(path, table, "record", text, f"{kind} (its {name} is missing)", key)
        elif not _fits(record[name], f.type):
            raise corrupt(path, table, "record", text, f"{kind} ({name}: {_says(f.type)}, not "
                          f"{record[name]!r:.30})", key)
    return record
