"""The README's configuration text against the config loaders.

Every key a loader accepts is named in the README (in code, or as a key of a TOML example), and
every TOML example of the README loads through the loader it is written for. Both drifted: keys
added to the dataclasses went undocumented, and an example that no longer loads teaches a
ConfigError.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path

import pytest

from fedge.coordinator.service import ServiceConfig
from fedge.edge_runtime.device_config import DeviceConfig
from fedge.edge_runtime.kernel.configfile import from_dict
from fedge.models.onnx_import import ImportOptions
from fedge.models.spec import LayerSpec, ModelSpec, spec_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
TOML_BLOCKS = [m.group(1) for m in re.finditer(r"^```toml\n(.*?)^```", README, re.S | re.M)]


def keys(cls: type, prefix: str = "") -> list[str]:
    """Every TOML key of dataclass `cls`, dotted, nested tables walked."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f.metadata.get("toml", f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += keys(hints[f.name], f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def named(key: str, text: str = README) -> bool:
    """`key` in an inline code span (`key`, `key = 3`, `[table] key`), or a key (commented or not)
    or table header of a TOML example."""
    leaf = re.escape(key.rsplit(".", 1)[-1])
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", prose)
    in_code = any(re.search(rf"(?<![\w-]){leaf}(?![\w-])", span) for span in spans)
    in_toml = any(re.search(rf"^[\s#]*{leaf}\s*=|^\s*\[\[?[\w.]*\b{leaf}\]", block, re.M)
                  for block in TOML_BLOCKS)
    return in_code or in_toml


def test_named_finds_keys_in_code_and_toml_only():
    text = "uses `poll_s = 0.2` and `seed`, the plain word clean_start, then `x`"
    assert named("agent.poll_s", text)
    assert not named("broker.clean_start", text)  # between two code spans, in neither


@pytest.mark.parametrize("cls", [ServiceConfig, DeviceConfig, ModelSpec, LayerSpec, ImportOptions],
                         ids=lambda c: c.__name__)
def test_every_config_key_is_documented(cls):
    missing = [key for key in keys(cls) if not named(key)]
    assert not missing, f"{cls.__name__} keys the README never names: {missing}"


def test_readme_toml_examples_load():
    assert len(TOML_BLOCKS) >= 8
    for block in TOML_BLOCKS:
        data = tomllib.loads(block)
        if "model" in data:
            spec_from_dict(data["model"])
            continue
        data.setdefault("coordinator", {}).setdefault("artifacts_dir", "artifacts")  # the fragments leave it out
        from_dict(ServiceConfig, data)
