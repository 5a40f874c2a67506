"""The README's configuration text against the config loaders.

Every key a loader accepts is named in the README (in code, or as a key of a TOML example), and
every TOML example of the README loads through the loader it is written for. Both drifted: keys
added to the dataclasses went undocumented, and an example that no longer loads teaches a
ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from pathlib import Path

import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.service import ServiceConfig
from fedge.coordinator.strategies import STRATEGIES, strategy_from_config
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


def flat_keys(data: dict, prefix: str = "") -> dict[str, object]:
    """A TOML document's values by dotted key."""
    out = {}
    for key, value in data.items():
        out.update(flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


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


# --- Documented defaults against the dataclasses' ------------------------------------------------

ROOTS = {"service": ServiceConfig, "device": DeviceConfig, "spec": ModelSpec, "layer": LayerSpec,
         "profile": DeviceProfile}
UNITS = {"": 1, "s": 1, "MiB": 2 ** 20}
# Passages that list keys with their defaults as `key = value` spans (every other `key = value` in
# the README is an example of a setting, not its default).
DEFAULT_LISTS = [("its defaults are `epochs = 1`", "(Updates on the wire)", "service"),
                 ("Every other key, with its default", "### State in PostgreSQL", "service"),
                 ("config (defaults: battery", "`fedge device init` writes", "device"),
                 ("`[agent]` `checkin_s = 60`", "A device that is not eligible", "device")]
NOT_DEFAULTS = {'strategy = "fedprox"', 'window = "01:00-06:00"'}  # in those passages, but an example


def defaults(cls: type, prefix: str = "") -> dict[str, object]:
    """Every TOML key of dataclass `cls`, dotted, with its default (required keys left out)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f.metadata.get("toml", f.name)
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(defaults(hints[f.name], f"{prefix}{key}."))
        elif f.default is not dataclasses.MISSING:
            out[f"{prefix}{key}"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f"{prefix}{key}"] = f.default_factory()
    return out


def literal(text: str) -> object:
    """A TOML value written in the README (`30`, `1e-6`, `"rdp"`, `["wifi", "ethernet"]`)."""
    return tomllib.loads(f"x = {text}")["x"]


def same(value: object, default: object) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return float(value) == float(default)
    return value == default


def leaf_defaults(root: str) -> dict[str, list[object]]:
    """The defaults of every key of a config file kind, by the key's last name."""
    out: dict[str, list[object]] = {}
    for key, default in defaults(ROOTS[root]).items():
        out.setdefault(key.rsplit(".", 1)[-1], []).append(default)
    return out


def documented_default_problems(text: str = README) -> list[str]:
    """Where the README gives a config key a default its dataclass does not have: a `key = value`
    span in a passage that lists defaults, a "`key` (value" anywhere in the prose, and a TOML
    example's `key = value  # default X` or `# the default` comment."""
    problems = []
    service = leaf_defaults("service")
    for start, end, root in DEFAULT_LISTS:
        passage = text[text.index(start):text.index(end, text.index(start))]
        known = leaf_defaults(root)
        for key, value in re.findall(r"`([a-z_0-9]+) = ([^`]+)`", passage):
            if f"{key} = {value}" in NOT_DEFAULTS:
                continue
            if key in known and not any(same(literal(value), d) for d in known[key]):
                problems.append(f"`{key} = {value}` (listed as a default): the code's is {known[key]}")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    paren = r"`(?:\[[\w.]+\] )?([a-z_0-9]+)` \((-?[\d.]+(?:e-?\d+)?|true|false)(?: (s|MiB))?[;,:)]"
    for key, value, unit in re.findall(paren, prose):
        if key in service and key != "server_lr":  # server_lr's are the strategies' (their own test)
            documented = literal(value) * UNITS[unit] if unit else literal(value)
            if not any(same(documented, d) for d in service[key]):
                problems.append(f"`{key}` ({value}{' ' + unit if unit else ''}): the code's default is {service[key]}")
    for block in re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M):
        root = ("spec" if block.lstrip().startswith("[model]") else
                "profile" if re.search(r"^compute_speed|^\[trace\]", block, re.M) else "service")
        table = ""
        for line in block.splitlines():
            if header := re.match(r"^\[\[?([\w.]+)\]\]?", line):
                table = header.group(1)
                continue
            match = re.match(r"^(\w+)\s*=\s*(.+?)\s+#\s*(.*)$", line)
            if not match:
                continue
            key, value, comment = match.groups()
            said = re.match(r"(?:\w+ \()?default\)?(?: (\S+?))?[;,]?(?:\s|$)", comment)
            if said is None and not comment.startswith("the default"):
                continue
            documented = literal(said.group(1)) if said and said.group(1) else literal(value)
            if said and said.group(0).startswith(value.strip('"')):  # `link = "wifi"  # wifi (default)`
                documented = literal(value)
            path = {"spec": {"model": "", "model.layers": ""}, "profile": {"": "", "trace": "trace."}}.get(
                root, {}).get(table, f"{table}." if table else "")
            cls_root = "layer" if table == "model.layers" else root
            default = defaults(ROOTS[cls_root]).get(f"{path}{key}")
            if default is None and cls_root == "profile" and key == "name":
                continue  # the profile's name defaults to its file's (tools/simulate/profiles.py)
            if not same(documented, default):
                problems.append(f"TOML example `{line.strip()}`: the code's default is {default!r}")
    return problems


def test_every_default_the_readme_gives_is_the_codes():
    assert not documented_default_problems()


def test_the_default_check_sees_a_drifted_default():
    drifted = README.replace("`keepalive_s = 30`", "`keepalive_s = 60`").replace(
        "byzantine_fraction` (0.2)", "byzantine_fraction` (0.3)").replace(
        "lora_rank = 8          # default 4", "lora_rank = 8          # default 16")
    assert documented_default_problems(drifted) == [
        "`keepalive_s = 60` (listed as a default): the code's is [30]",
        "`byzantine_fraction` (0.3): the code's default is [0.2]",
        "TOML example `lora_rank = 8          # default 16`: the code's default is 4"]


STRATEGY_ATTRS = {"server_lr": "server_lr", "prox_mu": "mu", "server_momentum": "momentum",
                  "server_beta1": "beta1", "server_beta2": "beta2", "server_tau": "tau"}


def test_the_strategy_table_gives_each_strategy_the_options_it_runs_with():
    """The table's `server_lr` (0.1 / 0.03 / 0.03) and the like are the strategies' own defaults,
    which a config without those keys gets (server_lr = 0 picks them)."""
    row = r"^\| (`[a-z]+`(?:, `[a-z]+`)*) \| [^\n]*\| ([^|\n]*) \|$"
    rows = re.findall(row, section("Aggregation strategies"), re.M)
    assert {name for names, _ in rows for name in re.findall(r"`(\w+)`", names)} == set(STRATEGIES)
    wrong = []
    for names, options in rows:
        for i, name in enumerate(re.findall(r"`(\w+)`", names)):
            strategy = strategy_from_config(CoordinatorConfig(strategy=name))
            for option, values in re.findall(r"`(\w+)` \(([^)]*)\)", options):
                value = values.split(" / ")[i] if " / " in values else values
                actual = getattr(strategy, STRATEGY_ATTRS[option])
                expected = 1 - strategy.momentum if value == "1 − momentum" else float(value)
                if not math.isclose(actual, expected):
                    wrong.append(f"{name}: README {option} ({value}), the strategy runs with {actual}")
    assert not wrong, wrong


def test_the_config_fuzz_counts_the_readme_gives_are_the_fuzz_tests():
    """The README gave 218 fields and 1,637 documents while the fuzz test ran 369 and 2,809."""
    from tests.config_fuzz import cases, leaves
    from tests.config_fuzz_loaders import LOADERS

    fields = sum(len(list(leaves(loader.cls, loader.table))) for loader in LOADERS)
    documents = sum(len(list(cases(loader))) for loader in LOADERS)
    text = " ".join(README.split())
    assert f"loads each of the {fields} fields that fedge's {len(LOADERS)} config loaders read" in text
    assert f"({documents:,} documents)" in text


def test_the_service_example_differs_from_the_defaults_only_where_the_readme_says():
    """The configuration example reads as a list of defaults; the README names the keys where it
    is not (min_reports = 5 is the default 0's ceil(10 / 2), min_devices = 2 is not the default 1)."""
    example = next(b for b in TOML_BLOCKS if b.startswith("[broker]"))
    written = flat_keys(tomllib.loads(example))
    table = defaults(ServiceConfig)
    differ = {key for key, value in written.items() if not same(value, table[key])}
    said = section("The coordinator")
    start = said.index("the example's values are the defaults but for")
    listed = set(re.findall(r"`(\w+) = [^`]*`", said[start:said.index("table (above)", start)]))
    assert differ - {"broker.username", "broker.password"} == (
        {"service.min_devices"} | {f"coordinator.{k}" for k in listed}
        | {f"coordinator.hyper.{k}" for k in ("epochs", "batch_size", "lr", "momentum")})
    assert "`min_devices = 1` (the example's 2 is a choice)" in said
