"""A generator of hostile TOML config documents, one per (field, value), for every field of every
config that a fedge command loads from TOML (tests/test_config_fuzz.py runs them).

The fields are found, not listed: `dataclasses.fields`, walked recursively from each loader's
top-level class (nested dataclasses, tuples of them), so a field added later is fuzzed without a
change here. Each case is the loader's smallest accepted document with one field changed; the
document is written as TOML text (inline values) and read back by the real loader.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

LONG = "x" * 10**6


@dataclass(frozen=True)
class Loader:
    name: str
    load: Callable  # path -> config
    cls: type  # the dataclass of `table`
    table: str  # its dotted path in the file ("" = the root)
    base: dict  # the smallest document the loader accepts


@dataclass(frozen=True)
class Leaf:
    owner: type  # the dataclass that declares the field
    key: str  # its TOML key
    path: str  # its dotted path from the file's root ("model.layers[0].units")
    hint: Any


@dataclass(frozen=True)
class Case:
    leaf: Leaf
    kind: str  # "wrong_type", "bool_for_int", ... (VALUE_KINDS)
    value: Any

    @property
    def name(self) -> str:  # what the allowance table keys on
        return f"{self.leaf.owner.__name__}.{self.leaf.key}"

    @property
    def id(self) -> str:
        return f"{self.leaf.path}={self.kind}"


# Kinds that no field may accept: a value of the wrong type, a bool or a float where an integer
# is expected, NaN, an integer TOML itself does not define (past 64 bits), a megabyte of text.
ALWAYS_REFUSED = {"wrong_type", "bool_for_int", "float_for_int", "nan", "int_2_70", "long_string"}
# Kinds a field may accept, where the value means something that works (the test's allowances).
MAY_ACCEPT = {"inf", "-inf", "zero", "negative", "empty_string"}


def _plain(hint: Any) -> Any:
    """`hint` without None: `float | None` -> float (TOML has no null to write)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _element(hint: Any) -> tuple[Any, ...] | None:
    """The element hints of a tuple hint (one, for tuple[X, ...]), else None."""
    if typing.get_origin(hint) is not tuple:
        return None
    args = typing.get_args(hint)
    return (args[0],) if len(args) == 2 and args[1] is Ellipsis else args


def tables(cls: type, path: str = "") -> Iterator[tuple[type, str]]:
    """(dataclass, dotted path) of `cls`'s table and of every table nested in it."""
    yield cls, path
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint, at = _plain(hints[f.name]), _join(path, f.metadata.get("toml", f.name))
        if dataclasses.is_dataclass(hint):
            yield from tables(hint, at)
        elif _element(hint) and dataclasses.is_dataclass(_element(hint)[0]):
            yield from tables(_element(hint)[0], f"{at}[0]")


def leaves(cls: type, path: str = "") -> Iterator[Leaf]:
    """Every scalar or array field under `cls`, with its dotted path."""
    for owner, at in tables(cls, path):
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            hint = _plain(hints[f.name])
            element = _element(hint)
            if not f.init or dataclasses.is_dataclass(hint) or (element and dataclasses.is_dataclass(element[0])):
                continue
            key = f.metadata.get("toml", f.name)
            yield Leaf(owner, key, _join(at, key), hint)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def values(hint: Any) -> Iterator[tuple[str, Any]]:
    """(kind, value) of each hostile value for a field of type `hint`."""
    hint = _plain(hint)
    element = _element(hint)
    if element is not None:  # an array: the wrong shape, then each hostile value as its first item
        yield "wrong_type", _filler(element[0])
        yield "wrong_type", {"a": 1}
        for kind, value in values(element[0]):
            yield kind, [value, *(_filler(e) for e in element[1:])]
        return
    if typing.get_origin(hint) is dict or hint is dict:
        yield "wrong_type", "x"
        yield "wrong_type", [1]
        return
    if hint is bool:
        yield from (("wrong_type", 1), ("wrong_type", "true"), ("wrong_type", {"a": 1}), ("wrong_type", [True]))
        return
    if hint is int:
        yield from (("wrong_type", "1"), ("wrong_type", {"a": 1}), ("wrong_type", [1]),
                    ("bool_for_int", True), ("float_for_int", 1.5),
                    ("zero", 0), ("negative", -1), ("int_2_70", 2**70))
        return
    if hint is float:
        yield from (("wrong_type", "1.0"), ("wrong_type", {"a": 1}), ("wrong_type", [1.0]),
                    ("wrong_type", True), ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
                    ("zero", 0.0), ("negative", -1.0))
        return
    if hint is str:
        yield from (("wrong_type", 1), ("wrong_type", {"a": "x"}), ("wrong_type", ["x"]),
                    ("empty_string", ""), ("long_string", LONG))
        return
    raise AssertionError(f"no hostile values for a field of type {hint!r}: teach tests/config_fuzz.py")


def _filler(hint: Any) -> Any:
    """A plain value of type `hint`, to fill an array's other places."""
    hint = _plain(hint)
    return {int: 1, float: 1.0, str: "x", bool: True}.get(hint, "x")


def cases(loader: Loader) -> Iterator[Case]:
    for leaf in leaves(loader.cls, loader.table):
        for kind, value in values(leaf.hint):
            yield Case(leaf, kind, value)


def with_value(doc: dict, path: str, value: Any) -> dict:
    """A deep copy of `doc` with the value at dotted `path` ("a.b[0].c") set."""
    doc = _copy(doc)
    parts = path.split(".")
    node = doc
    for part in parts[:-1]:
        name, index = _index(part)
        node = node.setdefault(name, {} if index is None else [{}])
        if index is not None:
            node = node[index]
    node[parts[-1]] = value
    return doc


def _index(part: str) -> tuple[str, int | None]:
    if part.endswith("]"):
        name, _, index = part[:-1].partition("[")
        return name, int(index)
    return part, None


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def to_toml(doc: dict) -> str:
    """`doc` as TOML: one `key = inline value` line per root key."""
    return "".join(f"{_key(k)} = {_inline(v)}\n" for k, v in doc.items())


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else _string(key)


def _string(text: str) -> str:
    if "'" not in text and text.isprintable():  # a literal string: tomllib reads a megabyte of it 15x faster
        return f"'{text}'"
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "inf" if value == math.inf else "-inf" if value == -math.inf \
            else repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")
