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
from fedge.edge_runtime.kernel.configfile import from_dict, load_toml
from fedge.models.onnx_import import ImportOptions
from fedge.models.spec import LayerSpec, ModelSpec, spec_from_dict
from fedge.tools.simulate.profiles import DeviceProfile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
PROFILES_SECTION = "Device profiles (hardware/profiles)"
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
    or table header of a TOML example of `text`."""
    leaf = re.escape(key.rsplit(".", 1)[-1])
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", prose)
    in_code = any(re.search(rf"(?<![\w-]){leaf}(?![\w-])", span) for span in spans)
    in_toml = any(re.search(rf"^[\s#]*{leaf}\s*=|^\s*\[\[?[\w.]*\b{leaf}\]", block, re.M)
                  for block in re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M))
    return in_code or in_toml


def section(title: str) -> str:
    """The README's text under heading `title`, up to the next heading of its level or above
    (a `#` line inside a code block is no heading)."""
    out, level, fenced = None, 0, False
    for line in README.splitlines(keepends=True):
        fenced ^= line.startswith("```")
        heading = None if fenced else re.match(r"(#+) (.*)$", line.rstrip("\n"))
        if out is None:
            if heading and heading.group(2) == title:
                out, level = [], len(heading.group(1))
        elif heading and len(heading.group(1)) <= level:
            break
        else:
            out.append(line)
    assert out is not None, f"no README heading {title!r}"
    return "".join(out)


def test_named_finds_keys_in_code_and_toml_only():
    text = "uses `poll_s = 0.2` and `seed`, the plain word clean_start, then `x`"
    assert named("agent.poll_s", text)
    assert not named("broker.clean_start", text)  # between two code spans, in neither


@pytest.mark.parametrize("cls", [ServiceConfig, DeviceConfig, ModelSpec, LayerSpec, ImportOptions],
                         ids=lambda c: c.__name__)
def test_every_config_key_is_documented(cls):
    missing = [key for key in keys(cls) if not named(key)]
    assert not missing, f"{cls.__name__} keys the README never names: {missing}"


def test_every_device_profile_key_is_documented_in_the_profiles_section():
    """hardware/profiles/*.toml keys (DeviceProfile, its [trace] FactTrace) were named nowhere in
    the README; most are common words (link, metered, period_s), so the check is their section's."""
    text = section(PROFILES_SECTION)
    missing = [key for key in keys(DeviceProfile) if not named(key, text)]
    assert not missing, f"device profile keys the README's {PROFILES_SECTION!r} never names: {missing}"
    profiles = sorted((Path(__file__).resolve().parents[1] / "hardware" / "profiles").glob("*.toml"))
    shipped = {key for path in profiles for key in flat_keys(load_toml(path))}
    assert shipped <= set(keys(DeviceProfile))  # what the shipped files use is what the check covers


def flat_keys(data: dict, prefix: str = "") -> list[str]:
    return [k for key, v in data.items()
            for k in (flat_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


def test_readme_toml_examples_load():
    assert len(TOML_BLOCKS) >= 8
    for block in TOML_BLOCKS:
        data = tomllib.loads(block)
        if "model" in data:
            spec_from_dict(data["model"])
            continue
        if "compute_speed" in data or "trace" in data:  # a device profile (hardware/profiles)
            from_dict(DeviceProfile, data)
            continue
        data.setdefault("coordinator", {}).setdefault("artifacts_dir", "artifacts")  # the fragments leave it out
        from_dict(ServiceConfig, data)
