"""The arm64 wheels of the device install, downloaded on the host (the guest has no network and
no binfmt to build anything): pip resolves `fedge[device]` from the built wheel for the
userland's Python and glibc (aarch64_rootfs.py), and the guest installs them offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.packaging.aarch64_rootfs import GLIBC, PYTHON_VERSION


def manylinux_platforms() -> list[str]:
    """Every manylinux tag the userland's glibc runs, newest first. pip's --platform takes tags
    literally (23.x does not widen manylinux_2_36 to the older ones), so all are named."""
    major, minor = GLIBC
    return [f"manylinux_{major}_{m}_aarch64" for m in range(minor, 16, -1)] + ["manylinux2014_aarch64"]


def download_device_wheels(wheel: Path, dest: Path) -> Path:
    """fedge's wheel with its [device] dependencies, and pip itself (the guest's venv has none)."""
    platforms = [arg for tag in manylinux_platforms() for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION, *platforms,
                    "-d", str(dest), f"{wheel}[device]", "pip"], check=True, timeout=600)
    return dest
