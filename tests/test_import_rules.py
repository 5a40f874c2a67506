"""Import rules, checked on the source (AST), so they hold whatever a test happened to import.

1. Everything imports under `fedge.`: no module imports `edge_runtime`, `coordinator`, `models`,
   `tools` or `hardware` as a top-level name. With the repository root on sys.path such an
   import loads a second copy of the module, whose exception classes differ from fedge's, so an
   `except` clause silently misses.
2. `coordinator/` and `models/` import nothing of the device runtime outside its shared kernel
   (`fedge.edge_runtime.kernel`).
3. The device runtime imports nothing of the coordinator, models, tools, hardware, or torch.
4. The kernel imports nothing of the rest of the device runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOPS = ("edge_runtime", "coordinator", "models", "tools", "hardware")


def _modules(folder: str, repo: Path = REPO) -> list[Path]:
    return sorted(p for p in (repo / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path, repo: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(repo).with_suffix("")
    package = list(rel.parts[:-1]) if rel.parts[-1] != "__init__" else list(rel.parts[:-1])
    if package and package[0] in TOPS:
        package = ["fedge", *package]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from fedge.edge_runtime import trainer` imports the submodule fedge.edge_runtime.trainer
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


ALL = [p for top in (*TOPS, "tests") for p in _modules(top)] + [REPO / "setup.py"]


def _where(path: Path, line: int) -> str:
    return f"{path.name}:{line}"


def test_the_scan_sees_the_whole_tree():
    assert len(ALL) > 150
    assert any(name == "fedge.edge_runtime.kernel.errors" for _, name in _imports(REPO / "coordinator" / "errors.py"))
    assert any(name.startswith("fedge.edge_runtime.kernel.")
               for _, name in _imports(REPO / "coordinator" / "server.py"))


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(REPO)))
def test_no_top_level_imports_of_fedge_folders(path):
    bad = [_where(path, line) + f" imports {name}" for line, name in _imports(path) if name.split(".")[0] in TOPS]
    assert not bad, "import these as fedge.<name>: " + "; ".join(bad)


def _offenders(folder: str, allowed, repo: Path = REPO) -> list[str]:
    return [_where(path, line) + f" imports {name}" for path in _modules(folder, repo)
            for line, name in _imports(path, repo) if not allowed(name)]


def _device_part(name: str) -> bool:
    return name == "fedge.edge_runtime" or name.startswith("fedge.edge_runtime.")


def _kernel(name: str) -> bool:
    return name == "fedge.edge_runtime.kernel" or name.startswith("fedge.edge_runtime.kernel.")


@pytest.mark.parametrize("folder", ["coordinator", "models"])
def test_coordinator_and_models_use_only_the_shared_kernel(folder):
    assert _offenders(folder, lambda n: not _device_part(n) or _kernel(n)) == []


def test_device_runtime_imports_no_coordinator_models_tools_or_torch():
    banned = ("fedge.coordinator", "fedge.models", "fedge.tools", "fedge.hardware", "torch")
    assert _offenders("edge_runtime", lambda n: not any(n == b or n.startswith(b + ".") for b in banned)) == []


def test_kernel_imports_nothing_else_of_the_device_runtime():
    assert _offenders("edge_runtime/kernel", lambda n: not _device_part(n) or _kernel(n)) == []


def test_a_planted_violation_is_seen(tmp_path):
    """The scan itself: a bare import and a relative device import from the coordinator are both found."""
    (tmp_path / "coordinator").mkdir()
    bad = tmp_path / "coordinator" / "bad.py"
    bad.write_text("from edge_runtime.agent import DeviceAgent\nfrom ..edge_runtime import device\n")
    names = [n for _, n in _imports(bad, tmp_path)]
    assert "edge_runtime.agent" in names and "fedge.edge_runtime.device" in names
    assert len(_offenders("coordinator", lambda n: not _device_part(n) or _kernel(n), tmp_path)) == 2


MAX_MODULE_LINES = 400  # a module past this holds two concerns (the brief's style rule)


def test_no_module_outside_tests_is_over_400_lines():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines())
             for top in TOPS for p in _modules(top)}
    assert sizes and max(sizes.values()) > 100  # the scan read real files
    assert {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES} == {}
