"""Frozen-dataclass configs from TOML: unknown keys and wrong types are errors, not surprises."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


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


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, recursing into nested dataclasses.

    Raises ConfigError naming the offending key and listing the valid ones.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {type(data).__name__}")
    # A field may name its TOML key (metadata={"toml": "async"}): `async` is a Python keyword.
    fields = {f.metadata.get("toml", f.name): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys are: {', '.join(sorted(fields))}"
        )
    required = [key for key, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and key not in data]
    if required:  # named as keys to write, not as Python's "missing positional argument"
        raise ConfigError(f"{where or cls.__name__}: missing required key(s) {', '.join(map(repr, required))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        name = fields[key].name
        kwargs[name] = _coerce(hints[name], value, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # an integer past float's range (1 followed by 400 zeros)
            raise ConfigError(f"{path}: an integer of {len(str(value))} digits is too large for a number") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: cannot use {value!r} as {hint}")


def load_config(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load `cls` from a TOML file (optionally one [section] of it)."""
    data = load_toml(path)
    if section is not None:
        data = data.get(section, {})
    return from_dict(cls, data, where=f"{Path(path).name}" + (f"[{section}]" if section else ""))
