"""The built wheel, shared by the packaging tests (one build per session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What .gitignore keeps out of the checkout (venvs, caches, build output, runs), and the history.
_NOT_SOURCE = (".git", ".venv", ".venv-*", ".cache", "build", "dist", "runs", "*.egg-info", "__pycache__",
               ".pytest_cache", ".ruff_cache", "fleet")


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """FEDGE_WHEEL when set (`make check-aarch64` passes what `make wheel` built), else a fresh build."""
    if os.environ.get("FEDGE_WHEEL"):
        return Path(os.environ["FEDGE_WHEEL"]).resolve()
    out = tmp_path_factory.mktemp("dist")
    # pip builds in the source tree (build/, *.egg-info): from a copy, so that the test workers
    # (make test runs two) never build into one folder at once, and no stale build/lib of the
    # checkout's (a module since deleted) can end up in the wheel.
    source = tmp_path_factory.mktemp("source") / "fedge"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    # --no-build-isolation: setuptools and wheel come from the test environment ([test] extra),
    # so the build needs no network.
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, cwd=source, env=env, timeout=300)
    (found,) = out.glob("fedge-*.whl")
    return found
