"""Frozen-dataclass configs from TOML: unknown keys and wrong types are errors, not surprises."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError
from .wire_fields import I64

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
# What every config value must be, whatever its field's own check says (the class's
# __post_init__ runs after these; tests/test_config_fuzz.py found each of them passing). An
# integer fits 64 bits, TOML's own limit: 2**70 passed checks that look at one end only
# (max_update_bytes, keep_versions, privacy.rounds, broker.max_message_bytes, ...). A number is
# finite: no setting means "none" by inf (0 does), and inf passed as pace_idle_s,
# secure_aggregation.stage_deadline_s, broker.reconnect_max_s, NaN as a profile's trace values.
# A string holds at most MAX_TEXT characters (PATH_MAX on Linux: more than any id, URL or path
# needs); a megabyte passed as state_db, data.npz, broker.username, a layer's name.
MAX_TEXT = 4096


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8
        raise ConfigError(f"{path}: not valid TOML (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except RecursionError:  # tomllib parses nested arrays/tables recursively: `a = [[[[...` a few thousand deep
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deep") from None
    except OSError as exc:  # a folder, no permission, ...
        raise ConfigError(f"config file {path}: cannot be read: {exc.strerror or exc}") from None


def key_at(where: str, key: str) -> str:
    """How every ConfigError spells a key: the file (or what was read), then the key's TOML
    dotted path from that file's root: "coordinator.toml: coordinator.privacy.delta"."""
    return f"{where}: {key}" if where and key else where or key


def from_dict(cls: type[T], data: dict[str, Any], where: str = "", table: str = "") -> T:
    """Build dataclass `cls` from a plain dict, recursing into nested dataclasses. `where`
    names the file (or whatever was read), `table` the dotted path of `data` in it ("" = root).

    Raises ConfigError naming the offending key (key_at) and listing the valid ones.
    """
    here = key_at(where, table) or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{here}: expected a table, got {type(data).__name__}")
    # A field may name its TOML key (metadata={"toml": "async"}): `async` is a Python keyword.
    fields = {f.metadata.get("toml", f.name): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{here}: unknown key(s) {', '.join(_unknown(key, fields) for key in unknown)}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    required = [key for key, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and key not in data]
    if required:  # named as keys to write, not as Python's "missing positional argument"
        raise ConfigError(f"{here}: missing required key(s) {', '.join(map(repr, required))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name, at = fields[key].name, f"{table}.{key}" if table else key
        kwargs[name] = _in_range(fields[key], _coerce(hints[name], value, where, at), where, at)
    try:
        # a class may choose a default from the other keys the file set (CoordinatorConfig.from_toml)
        build = getattr(cls, "from_toml", None)
        return build(data, **kwargs) if build else cls(**kwargs)
    except ConfigError as exc:  # the class's own check: the same error (its type kept), located
        exc.args = (_located(fields, where, table, str(exc)), *exc.args[1:])
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(_located(fields, where, table, str(exc))) from None


def _unknown(key: str, known) -> str:
    """`key`, quoted, with the known key it most likely misspells."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)


def _in_range(f: dataclasses.Field, value: Any, where: str, key: str) -> Any:
    """`value`, when it lies in the [lo, hi] its field declares (wire_fields.bounded: the codec
    checks the same range on the wire, and so should a config that sends it)."""
    bounds = f.metadata.get("range")
    if bounds is not None and isinstance(value, (int, float)) and not bounds[0] <= value <= bounds[1]:
        low, high = (f"{b:,}" if isinstance(b, int) else f"{b:g}" for b in bounds)
        raise ConfigError(f"{key_at(where, key)} must be in [{low}, {high}], got {value!r}")
    return value


def _located(keys, where: str, table: str, message: str) -> str:
    """A config class's own error, which names its key from the class's table ("delta must be"),
    or, as nested configs do, from that table's own key ("privacy.delta must be"), spelled with
    key_at: the file, then the full dotted path. One that names its key after a label ("layer
    fc1: units must be", "norm bound: multiplier must be") is located on that key, the label kept
    in brackets. A message that starts with no key gets the table."""
    first = re.match(r"[A-Za-z_][\w-]*", message)
    first = first.group(0) if first else ""
    parent, _, own = table.rpartition(".")
    if first in keys:
        return key_at(where, f"{table}.{message}" if table else message)
    label, colon, rest = message.partition(": ")
    after = re.match(r"[A-Za-z_][\w-]*", rest)
    if colon and after and after.group(0) in keys:
        return key_at(where, f"{table}.{rest}" if table else rest) + ("" if label == own else f" ({label})")
    if first and first == own:
        return key_at(where, f"{parent}.{message}" if parent else message)
    return f"{key_at(where, table)}: {message}" if where or table else message


def _coerce(hint: Any, value: Any, where: str, key: str) -> Any:
    """`value` as type `hint`; `key` is its dotted path in file `where`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, key)
    path = key_at(where, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return {str(k): _coerce(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range (1 followed by 400 zeros)
            raise ConfigError(f"{path}: an integer of {len(str(value))} digits is too large for a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if not I64[0] <= value <= I64[1]:
            raise ConfigError(f"{path}: {value} does not fit in 64 bits (TOML's integers are 64-bit)")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        if len(value) > MAX_TEXT:
            raise ConfigError(f"{path}: a string of {len(value):,} characters; at most {MAX_TEXT:,}")
        return value
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: cannot use {value!r} as {hint}")


def load_config(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load `cls` from a TOML file (optionally one [section] of it)."""
    data = load_toml(path)
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, Path(path).name, section or "")
