"""Which importable top-level modules an install with some of fedge's extras has: the extras'
requirements from pyproject.toml, closed over their own requirements as installed here. A
test that blocks every other module reproduces that install without building a venv."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# The test environment has the training build where an install has stock onnxruntime: the same
# module. Its own requirements (onnx among them) are not followed: stock onnxruntime lacks them.
SAME_MODULE = {"onnxruntime": "onnxruntime-training-cpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in SAME_MODULE:
            seen.add(SAME_MODULE[name])
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in requires if "extra ==" not in r)
    return seen


def modules_missing_from(*extras: str) -> set[str]:
    """Top-level modules installed here that an install of fedge with only `extras` lacks."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = {_name(r) for r in project.get("dependencies", [])}
    optional = project["optional-dependencies"]
    todo = list(extras)
    while todo:
        for requirement in optional[todo.pop()]:
            inner = re.match(r"fedge\[(.+)\]", requirement.replace(" ", ""))
            if inner:
                todo.extend(inner.group(1).split(","))
            else:
                wanted.add(_name(requirement))
    allowed = _closure(wanted)
    missing = set()
    for module, dists in metadata.packages_distributions().items():
        if module.startswith("_") or module == "fedge":
            continue
        if not any(d.lower().replace("_", "-") in allowed for d in dists):
            missing.add(module)
    return missing
