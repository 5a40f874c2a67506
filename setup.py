"""Maps the repository's top-level folders into the `fedge` namespace (metadata: pyproject.toml).

    edge_runtime/ -> fedge.edge_runtime    coordinator/ -> fedge.coordinator    models/ -> fedge.models
    tools/        -> fedge.tools           hardware/    -> fedge.hardware

`fedge` itself is an implicit namespace package: there is no fedge/ folder in the repository,
because with the repository root on sys.path (python -m pytest) such a folder would shadow the
installed mapping. pyproject.toml cannot prefix what `packages.find` finds, hence this file.
"""

from setuptools import find_packages, setup

TOP = ("edge_runtime", "coordinator", "models", "tools", "hardware")

setup(
    packages=[f"fedge.{name}" for name in find_packages(include=[f"{top}*" for top in TOP])],
    package_dir={f"fedge.{top}": top for top in TOP},
)
