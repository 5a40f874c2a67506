"""The built wheel, shared by the packaging tests (one build per session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """FEDGE_WHEEL when set (`make check-aarch64` passes what `make wheel` built), else a fresh build."""
    if os.environ.get("FEDGE_WHEEL"):
        return Path(os.environ["FEDGE_WHEEL"]).resolve()
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")
    # --no-build-isolation: setuptools and wheel come from the test environment ([test] extra),
    # so the build needs no network (pip builds in the tree: build/ and *.egg-info are ignored).
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, cwd=build, env=env, timeout=300)
    (found,) = out.glob("fedge-*.whl")
    return found
